"""Top-k routing as small pure functions of the router outputs.

Every function here takes and returns tensors (`keras.ops` only), has no
state and no randomness, so each can be tested alone against NumPy and used
under `jit` on every backend.

Notation used throughout the package: `T` tokens (rows routed independently:
batch items, sequence positions or pixels), `n` routed experts, `k` experts
per token.
"""

import math

from keras import ops


def router_probabilities(logits):
    """Softmax over the experts, always computed in float32.

    Under a `mixed_float16` policy the logits of a few hundred experts can
    saturate float16, and the balancing losses square or multiply these
    probabilities, so routing math never leaves float32.

    Args:
        logits: `(T, n)` router logits.

    Returns:
        `(T, n)` float32 probabilities.
    """
    return ops.softmax(ops.cast(logits, "float32"), axis=-1)


def sigmoid_router_scores(logits):
    """Per-expert sigmoid scores (DeepSeek-V3), in float32.

    Each expert scores a token on its own, `s_te = sigmoid(logit_te)`,
    instead of the experts competing in one softmax. Top-k selection then
    runs on `s + bias` and the chosen experts are mixed by their unbiased
    scores normalised over the k (`top_k_routing(..., normalize=True)`).

    Args:
        logits: `(T, n)` router logits.

    Returns:
        `(T, n)` float32 scores in (0, 1).
    """
    return ops.sigmoid(ops.cast(logits, "float32"))


def normalized_scores(scores):
    """Scores divided by their sum over the experts, a distribution per token.

    The balancing losses are written for router probabilities; sigmoid
    scores enter them in this normalised form.
    """
    return scores / (ops.sum(scores, axis=-1, keepdims=True) + 1e-9)


def cosine_router_logits(features, kernel, temperature):
    """Cosine-similarity router logits (X-MoE, Chi et al. 2022).

    `logits[t, e] = cos(x_t, w_e) / temperature`: the logits are bounded by
    `1 / temperature` whatever the scale of the features or of the kernel.
    A dot-product router on wide, unnormalised features (a flattened conv
    feature map) has no such bound: Adam moves every one of its `d` weights
    by about the learning rate per step, the logits grow with `d` and the
    softmax saturates within a few epochs, so a top-k mixture degenerates
    to its first expert (reports/router_saturation.md).

    Args:
        features: `(T, d)` float32 router features.
        kernel: `(d, n)` float32 router kernel, one column per expert.
        temperature: positive float.

    Returns:
        `(T, n)` float32 logits in `[-1 / temperature, 1 / temperature]`.
    """
    features = features / (ops.norm(features, axis=-1, keepdims=True) + 1e-6)
    kernel = kernel / (ops.norm(kernel, axis=0, keepdims=True) + 1e-6)
    return ops.matmul(features, kernel) / temperature


def top_k_routing(probabilities, top_k, selection_bias=None, normalize=True):
    """Selects the top-k experts of every token and their mixing weights.

    The selection may be shifted by a per-expert `selection_bias` (DeepSeek-V3
    loss-free balancing): the bias changes *which* experts are chosen but never
    the weights they are mixed with, which always come from the unbiased
    probabilities.

    Args:
        probabilities: `(T, n)` router probabilities.
        top_k: number of experts per token.
        selection_bias: optional `(n,)` bias added to the scores used for
            selection only.
        normalize: if `True`, the k weights of a token are divided by their
            sum (Mixtral, DeepSeek). If `False` they keep their softmax value
            (Switch Transformer); for `top_k=1` this is the only way the
            task loss can reach the router, since a renormalised single
            weight is the constant 1.

    Returns:
        `(weights, indices)`: `(T, k)` float32 weights and `(T, k)` int32
        expert indices, best expert first.
    """
    probabilities = ops.convert_to_tensor(probabilities)
    scores = probabilities
    if selection_bias is not None:
        scores = scores + ops.cast(selection_bias, scores.dtype)
    _, indices = ops.top_k(scores, k=top_k, sorted=True)
    indices = ops.cast(indices, "int32")
    weights = ops.take_along_axis(probabilities, indices, axis=-1)
    if normalize:
        weights = weights / (ops.sum(weights, axis=-1, keepdims=True) + 1e-9)
    return weights, indices


def expert_mask(expert_indices, num_experts):
    """`(T, n)` 0/1 float32 mask of the experts each token selected."""
    return ops.sum(ops.one_hot(expert_indices, num_experts), axis=-2)


def expert_capacity(num_tokens, num_experts, top_k, capacity_factor):
    """Slots per expert: `ceil(capacity_factor * tokens * k / n)`, at most `tokens`.

    Works on a Python int (static shapes: the usual case, and always under
    JAX) and on a scalar tensor (TensorFlow traces with an unknown batch).

    Args:
        num_tokens: tokens in the batch.
        num_experts: routed experts `n`.
        top_k: experts per token `k`.
        capacity_factor: a positive float, or `None` for dropless routing, in
            which case every expert can take every token.

    Returns:
        The capacity, an int or an int32 scalar tensor.
    """
    if capacity_factor is None:
        return num_tokens
    if isinstance(num_tokens, int):
        capacity = math.ceil(capacity_factor * num_tokens * top_k / num_experts)
        return max(1, min(capacity, num_tokens))
    tokens = ops.cast(num_tokens, "float32")
    capacity = ops.ceil(capacity_factor * tokens * top_k / num_experts)
    capacity = ops.clip(capacity, 1.0, tokens)
    return ops.cast(capacity, "int32")


def assign_capacity(expert_indices, num_experts, capacity, token_mask=None, priority=None):
    """Gives every (token, slot) its position in its expert's buffer.

    All first choices are placed before any second choice (GShard). Within
    a choice rank, tokens with a higher `priority` come first: with the
    router's top score as priority this is V-MoE's batch-prioritised routing
    (Riquelme et al. 2021), which drops the tokens the router is least sure
    of rather than the last ones in the batch; without it earlier tokens
    come first (GShard). A slot whose position is at or past `capacity` is
    dropped.

    Args:
        expert_indices: `(T, k)` int expert indices.
        num_experts: routed experts `n`.
        capacity: slots per expert (int or scalar tensor).
        token_mask: optional `(T,)` 0/1; a masked token (padding) takes no
            slot and is not kept.
        priority: optional `(T,)` float; higher is placed first (ties keep
            the batch order).

    Returns:
        `(positions, keep)`: `(T, k)` int32 positions (0-based) and `(T, k)`
        float32 mask, 1 where the slot fits in its expert's capacity.
    """
    one_hot = ops.one_hot(expert_indices, num_experts)  # (T, k, n)
    if token_mask is not None:
        one_hot = one_hot * ops.cast(token_mask, one_hot.dtype)[:, None, None]
    if priority is not None:
        # Negated for a descending order; a stable sort keeps batch order
        # among equal priorities.
        order = ops.argsort(-ops.cast(priority, "float32"))
        one_hot = ops.take(one_hot, order, axis=0)
    rank_major = ops.transpose(one_hot, (1, 0, 2))  # (k, T, n)
    flat = ops.reshape(rank_major, (-1, num_experts))
    # Running count per expert in priority order; minus one makes it 0-based.
    running = ops.cumsum(flat, axis=0) - 1.0
    running = ops.reshape(running, ops.shape(rank_major))
    running = ops.transpose(running, (1, 0, 2))  # (T, k, n)
    if priority is not None:
        running = ops.take(running, ops.argsort(order), axis=0)
        one_hot = ops.take(one_hot, ops.argsort(order), axis=0)
    positions = ops.sum(running * one_hot, axis=-1)
    keep = ops.cast(positions < ops.cast(capacity, positions.dtype), "float32")
    if token_mask is not None:
        keep = keep * ops.cast(token_mask, "float32")[:, None]
    return ops.cast(positions, "int32"), keep


def expert_choice_routing(scores, capacity, token_mask=None):
    """Expert-choice routing (Zhou et al. 2022): every expert takes its top
    `capacity` tokens.

    The load is balanced by construction (every expert processes exactly
    `capacity` tokens), while a token may be taken by several experts or by
    none. An expert chooses among all tokens of the batch, so a token's
    output depends on later tokens: the routing is not causal and is unfit
    for autoregressive decoding.

    Args:
        scores: `(T, n)` router probabilities (or scores).
        capacity: tokens per expert, a Python int at most `T`.
        token_mask: optional `(T,)` 0/1; masked tokens are never chosen
            while real ones are left.

    Returns:
        `(weights, token_indices)`: `(n, capacity)` float32 mixing weights
        (the chosen tokens' scores, 0 for a masked token) and `(n,
        capacity)` int32 token indices, best first.
    """
    scores = ops.cast(scores, "float32")
    per_expert = ops.transpose(scores)  # (n, T)
    if token_mask is not None:
        mask = ops.cast(token_mask, "float32")[None, :]
        per_expert = per_expert * mask - 2.0 * (1.0 - mask)
    weights, token_indices = ops.top_k(per_expert, k=capacity, sorted=True)
    weights = ops.maximum(weights, 0.0)
    return weights, ops.cast(token_indices, "int32")


def combine_weights(expert_weights, expert_indices, num_experts, keep=None):
    """Scatters the `(T, k)` weights into a dense `(T, n)` mixing matrix.

    Dropped slots (`keep == 0`) get weight zero, so a dropped token receives
    nothing from that expert.
    """
    if keep is not None:
        expert_weights = expert_weights * keep
    one_hot = ops.one_hot(expert_indices, num_experts)
    return ops.sum(one_hot * expert_weights[..., None], axis=-2)


def expert_token_counts(expert_indices, num_experts):
    """`(n,)` float32 count of token-slots that selected each expert."""
    return ops.sum(expert_mask(expert_indices, num_experts), axis=0)
