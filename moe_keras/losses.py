"""Auxiliary balancing losses, each a pure function of the router outputs.

The MoE layers add these through `Layer.add_loss` during training, each
multiplied by its own coefficient. Every function takes float32 router
outputs for one batch of `T` tokens routed among `n` experts with top-`k`
selection, and returns a float32 scalar. The anchors in the literature
disagree on normalisations; each docstring states the one used here and the
value that means "balanced", so a logged number can be read directly.
"""

import math

from keras import ops

_EPSILON = 1e-10


def token_mean(values, token_mask=None):
    """Mean over the token axis (0) of `values`, over unmasked tokens only.

    Padding must not move a balancing loss: with `token_mask` (`(T,)` 0/1)
    the masked rows get weight zero and the mean divides by the real count.
    """
    if token_mask is None:
        return ops.mean(values, axis=0)
    weights = ops.cast(token_mask, values.dtype)
    weights = ops.reshape(weights, (-1,) + (1,) * (len(values.shape) - 1))
    total = ops.maximum(ops.sum(weights), 1.0)
    return ops.sum(values * weights, axis=0) / total


def switch_load_balancing_loss(probabilities, expert_mask, top_k, token_mask=None):
    """Switch Transformer load-balancing loss (Fedus et al. 2021, eq. 4).

    `L = n * sum_i f_i * P_i` with `f_i` the fraction of token-slots routed to
    expert `i` and `P_i` the mean router probability of expert `i`. `f_i` is
    divided by `k` so that it sums to 1 over the experts (as keras-hub's
    Mixtral does; dl_techniques does not divide, which moves its floor to
    `k`). Hence `L == 1.0` at perfect balance for every `k`, and `L == n` when
    every token goes to one expert with probability 1. Only `P_i` carries a
    gradient: the loss lowers the probability of over-used experts.

    Args:
        probabilities: `(T, n)` router probabilities.
        expert_mask: `(T, n)` 0/1 mask of the selected experts (k ones a row).
        top_k: experts per token.
        token_mask: optional `(T,)` 0/1; masked tokens (padding) are left
            out of both means.

    Returns:
        Scalar loss, 1.0 when balanced.
    """
    num_experts = ops.shape(probabilities)[-1]
    fraction_routed = token_mean(expert_mask, token_mask) / top_k
    mean_probability = token_mean(probabilities, token_mask)
    return num_experts * ops.sum(fraction_routed * mean_probability)


def coefficient_of_variation_squared(values):
    """`Var(x) / (mean(x)^2 + 1e-10)` with the population variance.

    tensor2tensor's definition; a popular PyTorch port used the unbiased
    variance, which its users reported as a bug.
    """
    mean = ops.mean(values)
    variance = ops.mean(ops.square(values - mean))
    return variance / (ops.square(mean) + _EPSILON)


def importance_loss(probabilities, token_mask=None):
    """Importance loss (Shazeer et al. 2017, eq. 6; GShard).

    `L = CV(importance)^2` with `importance_i = sum_t p_ti`, the total gate
    probability each expert receives over the batch. It is computed on the
    full softmax rather than the renormalised top-k gates, because for `k=1`
    a renormalised gate is the constant 1 and would give no gradient.

    Returns:
        Scalar loss, 0.0 when every expert receives the same total probability.
    """
    if token_mask is not None:
        probabilities = probabilities * ops.cast(token_mask, probabilities.dtype)[:, None]
    return coefficient_of_variation_squared(ops.sum(probabilities, axis=0))


def diversity_loss(probabilities, token_mask=None):
    """Diversity (entropy) loss: `L = 1 - H(mean_t p_t) / log(n)`.

    `H` is the entropy (natural log) of the batch-mean routing distribution.
    Dividing by its maximum `log(n)` puts the loss in [0, 1] for any `n`: 0
    when the batch as a whole uses all experts equally, 1 when it uses one.
    Minimising it maximises the entropy, pushing the router to use all
    experts, while each single token may still route sharply.

    Returns:
        Scalar loss in [0, 1], 0.0 when balanced.
    """
    num_experts = probabilities.shape[-1]
    mean_probability = token_mean(probabilities, token_mask)
    entropy = -ops.sum(mean_probability * ops.log(mean_probability + _EPSILON))
    return 1.0 - entropy / math.log(num_experts)


def overflow_loss(probabilities, expert_mask, top_k, capacity_factor=1.0, token_mask=None):
    """Overflow loss: Switch-style penalty on the load above capacity only.

    Capacity is `c = capacity_factor * T * k / n` token-slots per expert. With
    `o_i = max(0, count_i - c) / (T * k)`, the fraction of all slots that
    overflow expert `i`, the loss is `L = n * sum_i o_i * P_i` (`P_i` the mean
    router probability). It is exactly 0 while no expert exceeds capacity and
    then, like the Switch loss, sends its gradient through the gate
    probabilities of the overflowing experts only.

    Args:
        probabilities: `(T, n)` router probabilities.
        expert_mask: `(T, n)` 0/1 mask of the selected experts.
        top_k: experts per token.
        capacity_factor: capacity relative to a perfectly balanced load.

    Returns:
        Scalar loss, 0.0 when no expert is over capacity.
    """
    if token_mask is None:
        num_tokens = ops.cast(ops.shape(probabilities)[0], "float32")
    else:
        num_tokens = ops.maximum(ops.sum(ops.cast(token_mask, "float32")), 1.0)
        expert_mask = expert_mask * ops.cast(token_mask, expert_mask.dtype)[:, None]
    num_experts = probabilities.shape[-1]
    slots = num_tokens * top_k
    capacity = capacity_factor * slots / num_experts
    counts = ops.sum(expert_mask, axis=0)
    overflow_fraction = ops.relu(counts - capacity) / slots
    mean_probability = token_mean(probabilities, token_mask)
    return num_experts * ops.sum(overflow_fraction * mean_probability)


def router_z_loss(logits, token_mask=None):
    """Router z-loss (ST-MoE, Zoph et al. 2022, eq. 5): `mean_t logsumexp(x_t)^2`.

    Keeps router logits small so that the softmax stays in a numerically
    safe range; it does not balance by itself. Computed in float32.
    """
    logits = ops.cast(logits, "float32")
    return token_mean(ops.square(ops.logsumexp(logits, axis=-1)), token_mask)


def loss_free_bias_update(selection_bias, expert_counts, rate):
    """DeepSeek-V3 auxiliary-loss-free balancing step (Wang et al. 2024).

    `b_i <- b_i + rate * sign(mean_load - load_i)`: under-used experts get a
    higher selection bias, over-used ones a lower one. No gradient flows; the
    bias only enters top-k selection, never the mixing weights.

    Args:
        selection_bias: `(n,)` current bias.
        expert_counts: `(n,)` token-slots routed to each expert this step.
        rate: update speed (DeepSeek-V3 uses 1e-3).

    Returns:
        The new `(n,)` bias.
    """
    expert_counts = ops.convert_to_tensor(expert_counts)
    error = ops.mean(expert_counts) - expert_counts
    return ops.convert_to_tensor(selection_bias) + rate * ops.sign(error)
