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

Both moves are gathers, and so are their gradients: every slot holds one
token choice and every choice sits in at most one slot, so the plan carries
the map in both directions (`DispatchPlan`) and `gather_rows` differentiates
a gather with the gather through the inverse map. Autodiff would instead
scatter-add the gradient (XLA: a serial loop on CPU, atomics on GPU).
Measured on a 2-core CPU (JAX, 8,192 tokens of 256 features, k=1): routing
and dispatch alone went from 13.7 to 3.8 ms forward+backward at n=8; the
whole sparse layer with hidden-512 experts from 66.0 to 64.9 ms at n=8 and
from 86.0 to 81.1 ms at n=64 (`benchmarks/README.md`).

Only `keras.ops` with shapes known at trace time (given the batch), so both
run under `jit_compile=True` on TensorFlow and JAX.
"""

from typing import NamedTuple

from keras import ops


class DispatchPlan(NamedTuple):
    """Where every token choice goes, in both directions.

    Attributes:
        slot_choices: `(n * capacity,)` int32: the flat choice `t * k + j`
            (token `t`'s `j`-th expert) held by each expert slot, `T * k`
            for an empty slot.
        slot_ids: `(T, k)` int32: the flat slot `e * capacity + position` of
            every choice, `n * capacity` for a choice dropped for capacity.
    """

    slot_choices: object
    slot_ids: object


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
        A `DispatchPlan`.
    """
    expert_indices = ops.convert_to_tensor(expert_indices)
    positions = ops.convert_to_tensor(positions)
    num_slots = num_experts * capacity
    kept = ops.convert_to_tensor(keep) > 0
    slot_ids = ops.where(kept, expert_indices * capacity + positions, num_slots)
    # Choice ids from a cumsum rather than `arange(T * k)`: the ids then
    # share the tokens' own (possibly dynamic) batch size under XLA.
    flat_kept = ops.reshape(ops.cast(kept, "int32"), (-1,))
    choice_ids = ops.cumsum(ops.ones_like(flat_kept)) - 1
    num_choices = ops.shape(flat_kept)[0]
    # Each kept slot holds exactly one choice, so a segment sum of (id + 1)
    # recovers the id, and 0 marks an empty slot. No gradient flows here.
    table = ops.segment_sum(
        flat_kept * (choice_ids + 1),
        ops.reshape(slot_ids, (-1,)),
        num_segments=num_slots + 1,
    )
    table = table[:num_slots] - 1
    slot_choices = ops.where(table < 0, num_choices, table)
    return DispatchPlan(slot_choices, slot_ids)


def _take_rows(values, index):
    """`values[index]`, with zero rows where `index` is `len(values)`."""
    num_rows = ops.shape(values)[0]
    present = ops.cast(index < num_rows, values.dtype)
    rows = ops.take(values, ops.minimum(index, num_rows - 1), axis=0)
    return rows * ops.expand_dims(present, -1)


def gather_rows(values, index, inverse_index):
    """`values[index]` (zero rows where `index == len(values)`), with a
    gather, not a scatter, as its gradient.

    Args:
        values: `(N, d)`.
        index: `(M,)` int, rows of `values`, `N` for a zero row.
        inverse_index: `(N, r)` int, the output rows that read each row of
            `values` (`M` for none): every output row reading row `i` must
            appear in `inverse_index[i]`.

    Returns:
        `(M, d)`.
    """

    @ops.custom_gradient
    def gather(values):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            readers = _take_rows(upstream, ops.reshape(inverse_index, (-1,)))
            readers = ops.reshape(
                readers, (-1, inverse_index.shape[-1], upstream.shape[-1])
            )
            return ops.sum(readers, axis=1)

        return _take_rows(values, index), grad

    return gather(values)


def gather_tokens(tokens, plan, num_experts):
    """`(T, d)` tokens -> `(n, capacity, d)` expert buffers (zeros when empty)."""
    top_k = plan.slot_ids.shape[-1]
    # An empty slot's choice id T * k maps to the zero row T.
    slot_tokens = plan.slot_choices // top_k
    buffers = gather_rows(tokens, slot_tokens, plan.slot_ids)
    return ops.reshape(buffers, (num_experts, -1, tokens.shape[-1]))


def combine_slots(expert_outputs, plan, expert_weights, keep):
    """Gathers every token's k expert outputs back and mixes them.

    Args:
        expert_outputs: `(n, capacity, u)`.
        plan: the `DispatchPlan`.
        expert_weights: `(T, k)` mixing weights.
        keep: `(T, k)` 0/1 kept mask.

    Returns:
        `(T, u)` mixture; a token whose every choice was dropped gets zeros.
    """
    units = expert_outputs.shape[-1]
    top_k = plan.slot_ids.shape[-1]
    flat = ops.reshape(expert_outputs, (-1, units))
    chosen = gather_rows(
        flat, ops.reshape(plan.slot_ids, (-1,)), plan.slot_choices[:, None]
    )
    chosen = ops.reshape(chosen, (-1, top_k, units))
    weights = ops.cast(expert_weights * keep, chosen.dtype)
    return ops.einsum("tku,tk->tu", chosen, weights)


def dense_combine(expert_outputs, combine):
    """Mixes `(n, T, u)` outputs of all experts with a `(T, n)` weight matrix."""
    combine = ops.cast(combine, expert_outputs.dtype)
    return ops.einsum("te,etu->tu", combine, expert_outputs)
