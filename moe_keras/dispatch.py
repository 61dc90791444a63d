"""Moving tokens to experts and back, with static shapes.

Two strategies compute the same mixture:

* dense: every expert runs on every token (one einsum) and the outputs are
  mixed with a `(T, n)` weight matrix that is zero outside each token's top-k.
  Cost grows with `n`, but there is no gather or scatter; for small experts it
  is the fastest.
* sparse: each expert gets a buffer of `capacity` token slots; tokens are
  gathered into an `(n, capacity, d)` tensor, all experts run as one batched
  einsum, and every token gathers back and mixes its k outputs. With a capacity
  factor the expert compute is `capacity_factor * T * k` token-expert pairs,
  independent of `n`.

Only `keras.ops` with shapes known at trace time (given the batch), so both
run under `jit_compile=True` on TensorFlow and JAX.
"""

from keras import ops


def sparse_dispatch_plan(expert_indices, positions, keep, num_experts, capacity):
    """Builds the slot tables for the sparse path.

    Args:
        expert_indices: `(T, k)` int32 selected experts.
        positions: `(T, k)` int32 positions in the expert buffers (see
            `routing.assign_capacity`).
        keep: `(T, k)` 0/1, 0 for slots dropped for lack of capacity.
        num_experts: routed experts `n`.
        capacity: slots per expert.

    Returns:
        `(token_table, slot_ids)`: the `(n, capacity)` token held in each
        expert slot (the out-of-range index `T` for an empty slot, which
        gathers a zero row), and the `(T, k)` flat slot of every token choice
        (`n * capacity`, past the end, for a dropped choice).
    """
    num_tokens = ops.shape(expert_indices)[0]
    num_slots = num_experts * capacity
    kept = keep > 0
    # Dropped choices all point one past the last slot.
    slot_ids = ops.where(kept, expert_indices * capacity + positions, num_slots)
    # Token ids from a cumsum rather than `arange(num_tokens)`: the ids then
    # share the tokens' own (possibly dynamic) batch size under XLA.
    token_ids = ops.cumsum(ops.ones_like(expert_indices), axis=0) - 1
    # Each kept slot holds exactly one token, so a segment sum of (id + 1)
    # recovers the id, and 0 marks an empty slot. No gradient flows here.
    marked = ops.reshape(ops.cast(kept, "int32") * (token_ids + 1), (-1,))
    table = ops.segment_sum(
        marked, ops.reshape(slot_ids, (-1,)), num_segments=num_slots + 1
    )
    table = table[:num_slots] - 1
    table = ops.where(table < 0, num_tokens, table)
    return ops.reshape(table, (num_experts, capacity)), slot_ids


def gather_tokens(tokens, token_table):
    """`(T, d)` tokens -> `(n, capacity, d)` expert buffers (zeros when empty).

    Empty slots are zeroed by a mask rather than by gathering from an
    appended zero row: the gradient of a concatenation with gathered
    (sparse) gradients aborts XLA when the batch size is not static.
    """
    num_tokens = ops.shape(tokens)[0]
    occupied = ops.cast(token_table < num_tokens, tokens.dtype)
    gathered = ops.take(tokens, ops.minimum(token_table, num_tokens - 1), axis=0)
    return gathered * occupied[..., None]


def combine_slots(expert_outputs, slot_ids, expert_weights, keep):
    """Gathers every token's k expert outputs back and mixes them.

    A gather per token choice rather than a scatter per slot: its gradient is
    a plain segment sum, which XLA compiles for any batch size, where the
    gradient of a segment sum is not (TensorFlow `jit_compile=True` aborts).

    Args:
        expert_outputs: `(n, capacity, u)`.
        slot_ids: `(T, k)` from `sparse_dispatch_plan`.
        expert_weights: `(T, k)` mixing weights.
        keep: `(T, k)` 0/1 kept mask.

    Returns:
        `(T, u)` mixture; a token whose every choice was dropped gets zeros.
    """
    units = expert_outputs.shape[-1]
    flat = ops.reshape(expert_outputs, (-1, units))
    # Dropped choices (slot id past the end) read slot 0 and get weight 0.
    slot_ids = ops.where(keep > 0, slot_ids, 0)
    top_k = slot_ids.shape[-1]
    chosen = ops.take(flat, ops.reshape(slot_ids, (-1,)), axis=0)
    chosen = ops.reshape(chosen, (-1, top_k, units))
    weights = ops.cast(expert_weights * keep, chosen.dtype)
    return ops.einsum("tku,tk->tu", chosen, weights)


def dense_combine(expert_outputs, combine):
    """Mixes `(n, T, u)` outputs of all experts with a `(T, n)` weight matrix."""
    combine = ops.cast(combine, expert_outputs.dtype)
    return ops.einsum("te,etu->tu", combine, expert_outputs)
