"""Capacity-bounded sparse dispatch: `(n, capacity, d)` expert buffers.

Every expert gets a buffer of `capacity` token slots. Tokens are gathered
into an `(n, capacity, d)` tensor, all experts run as one batched einsum
(their own weights, no per-token weight copies), and every token gathers
back and mixes its k outputs. A choice that finds its expert's buffer full
is dropped. The plan holds the map in both directions (`DispatchPlan`), so
both moves and their gradients are gathers (`gather.gather_rows`).

Only `keras.ops` with shapes known at trace time (given the batch), so it
runs under `jit_compile=True` on TensorFlow and under `jax.jit`.
"""

from typing import NamedTuple

from keras import ops

from moe_keras.dispatch.gather import gather_rows
from moe_keras.dispatch.gather import mix_choices


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
    flat = ops.reshape(expert_outputs, (-1, units))
    chosen = gather_rows(
        flat, ops.reshape(plan.slot_ids, (-1,)), plan.slot_choices[:, None]
    )
    return mix_choices(chosen, expert_weights, keep)
