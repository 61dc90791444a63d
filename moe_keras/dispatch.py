"""Moving tokens to experts and back, with static shapes.

Two strategies compute the same mixture:

* dense: every expert runs on every token (one einsum) and the outputs are
  mixed with a `(T, n)` weight matrix that is zero outside each token's top-k.
  Cost grows with `n`, but there is no gather or scatter; for small experts it
  is the fastest.
* sparse: each expert gets a buffer of `capacity` token slots; tokens are
  gathered into an `(n, capacity, d)` tensor, all experts run as one batched
  einsum, and the weighted outputs are summed back per token. With a capacity
  factor the expert compute is `capacity_factor * T * k` token-expert pairs,
  independent of `n`.

Only `keras.ops` with shapes known at trace time (given the batch), so both
run under `jit_compile=True` on TensorFlow and JAX.
"""

from keras import ops


def sparse_dispatch_plan(
    expert_indices, expert_weights, positions, keep, num_experts, capacity
):
    """Builds the slot tables for the sparse path.

    Args:
        expert_indices: `(T, k)` int32 selected experts.
        expert_weights: `(T, k)` mixing weights.
        positions: `(T, k)` int32 positions in the expert buffers (see
            `routing.assign_capacity`).
        keep: `(T, k)` 0/1, 0 for slots dropped for lack of capacity.
        num_experts: routed experts `n`.
        capacity: slots per expert.

    Returns:
        `(token_table, weight_table)`, both `(n, capacity)`: the token held in
        each slot (the out-of-range index `T` for an empty slot, which gathers
        a zero row) and the weight its expert output is mixed with (0 for an
        empty slot).
    """
    num_tokens = ops.shape(expert_indices)[0]
    top_k = expert_indices.shape[-1]
    num_slots = num_experts * capacity
    kept = keep > 0
    # Dropped slots all go to one extra bucket past the end, sliced off below.
    slot_ids = ops.where(kept, expert_indices * capacity + positions, num_slots)
    slot_ids = ops.reshape(slot_ids, (-1,))
    token_ids = ops.repeat(ops.arange(num_tokens, dtype="int32"), top_k)
    # Each kept slot holds exactly one token, so a segment sum of (id + 1)
    # recovers the id, and 0 marks an empty slot.
    marked = ops.reshape(ops.cast(kept, "int32"), (-1,)) * (token_ids + 1)
    table = ops.segment_sum(marked, slot_ids, num_segments=num_slots + 1)
    table = table[:num_slots] - 1
    table = ops.where(table < 0, num_tokens, table)
    weights = ops.reshape(expert_weights * keep, (-1,))
    weight_table = ops.segment_sum(weights, slot_ids, num_segments=num_slots + 1)
    weight_table = weight_table[:num_slots]
    return (
        ops.reshape(table, (num_experts, capacity)),
        ops.reshape(weight_table, (num_experts, capacity)),
    )


def gather_tokens(tokens, token_table):
    """`(T, d)` tokens -> `(n, capacity, d)` expert buffers (zeros when empty)."""
    padded = ops.concatenate([tokens, ops.zeros_like(tokens[:1])], axis=0)
    return ops.take(padded, token_table, axis=0)


def scatter_combine(expert_outputs, token_table, weight_table, num_tokens):
    """Weights the `(n, capacity, u)` outputs and sums them back per token.

    Returns:
        `(T, u)` mixture; a token whose every slot was dropped gets zeros.
    """
    units = expert_outputs.shape[-1]
    weighted = expert_outputs * ops.cast(weight_table, expert_outputs.dtype)[
        ..., None
    ]
    flat = ops.reshape(weighted, (-1, units))
    summed = ops.segment_sum(
        flat, ops.reshape(token_table, (-1,)), num_segments=num_tokens + 1
    )
    return summed[:num_tokens]


def dense_combine(expert_outputs, combine):
    """Mixes `(n, T, u)` outputs of all experts with a `(T, n)` weight matrix."""
    combine = ops.cast(combine, expert_outputs.dtype)
    return ops.einsum("te,etu->tu", combine, expert_outputs)
