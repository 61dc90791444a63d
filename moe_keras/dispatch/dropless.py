"""Dropless sparse dispatch: every token gets all k experts, at a cost that
follows `T * k`, not `T * n`.

The token choices are ranked within their expert by one stable sort
(`sort_by_expert`), which gives every expert's group size and every
choice's position in its group. The experts then run in one of two
layouts, both with shapes fixed at trace time:

* Bucketed capacity (`bucketed_mixture`), the portable engine. A short,
  static ladder of capacities (`bucket_capacities`: 1.125, 1.25, 1.5, 2
  and 4 times the mean load, then all `T` tokens) is compiled, and the
  smallest rung that holds the busiest expert runs, picked with
  `ops.switch` (an XLA conditional: only that branch executes). Inside it,
  the experts run as one batched einsum over `(n, C, d)` buffers with their
  own weights, exactly as the capacity path does, but nothing is dropped
  because `C` is at least every group size. A balanced router lands on
  the first rungs (1.1-1.5x the active compute). Past twice the mean load
  the buffers' `n * C` rows would outgrow the sorted rows' `T * k` plus
  padding, so an imbalanced or collapsed router goes to the sorted rows
  instead (`strategy.dropless_mixture`).
* Sorted rows with a grouped matmul (`grouped.sorted_mixture`): the `T * k`
  choices sorted by expert run through `grouped.grouped_matmul`, JAX's
  `ragged_dot` where a backend kernel exists.

`strategy.py` chooses between them.
"""

import math
from typing import NamedTuple

import keras
from keras import ops

from moe_keras.dispatch.capacity import DispatchPlan
from moe_keras.dispatch.capacity import combine_slots
from moe_keras.dispatch.capacity import gather_tokens
from moe_keras.dispatch.gather import take_rows

BUCKET_FACTORS = (1.125, 1.25, 1.5, 2.0, 4.0)
"""Capacities compiled for dropless dispatch, as multiples of the mean load
`T * k / n`; all `T` tokens is always the last rung."""


class SortedChoices(NamedTuple):
    """The token choices ranked within their experts.

    Attributes:
        order: `(T * k,)` int32 flat choice ids (`t * k + j`) sorted by
            expert; masked choices come last.
        positions: `(T, k)` int32 rank of every choice within its expert.
        group_sizes: `(n,)` int32 choices per expert (masked ones excluded).
        valid: `(T, k)` float32, 0 for the choices of masked tokens.
    """

    order: object
    positions: object
    group_sizes: object
    valid: object


def sort_by_expert(expert_indices, num_experts, token_mask=None):
    """Ranks every token choice within its expert with one stable sort.

    Args:
        expert_indices: `(T, k)` int selected experts.
        num_experts: routed experts `n`.
        token_mask: optional `(T,)` 0/1; a masked token's choices join no
            group, take no position and are sorted last.

    Returns:
        A `SortedChoices`.
    """
    expert_indices = ops.cast(expert_indices, "int32")
    top_k = expert_indices.shape[-1]
    if token_mask is None:
        valid = ops.ones_like(expert_indices, dtype="float32")
    else:
        valid = ops.cast(token_mask, "float32")[:, None] * ops.ones_like(
            expert_indices, dtype="float32"
        )
    # Masked choices get the key `n`: a group of their own after the rest.
    keys = ops.where(valid > 0, expert_indices, num_experts)
    flat_keys = ops.reshape(keys, (-1,))
    order = ops.cast(ops.argsort(flat_keys), "int32")
    sorted_keys = ops.take(flat_keys, order)
    counts = ops.segment_sum(
        ops.ones_like(flat_keys), flat_keys, num_segments=num_experts + 1
    )
    offsets = ops.cumsum(counts) - counts
    rank_in_sorted = (
        ops.cumsum(ops.ones_like(sorted_keys)) - 1 - ops.take(offsets, sorted_keys)
    )
    # The inverse permutation: an integer scatter of `T * k` ids, no
    # gradient involved, and much cheaper than sorting `order` again.
    choice_ids = ops.cumsum(ops.ones_like(order)) - 1
    inverse = ops.scatter(order[:, None], choice_ids, ops.shape(order))
    positions = ops.reshape(ops.take(rank_in_sorted, inverse), (-1, top_k))
    return SortedChoices(
        order=order,
        positions=ops.cast(positions, "int32"),
        group_sizes=ops.cast(counts[:num_experts], "int32"),
        valid=valid,
    )


def bucket_capacities(num_tokens, num_experts, top_k, factors=BUCKET_FACTORS):
    """The static ladder of capacities for dropless dispatch.

    Args:
        num_tokens: `T`, a Python int or (unknown batch on TensorFlow) a
            scalar int tensor.
        num_experts: routed experts `n`.
        top_k: experts per token `k`.
        factors: rungs as multiples of the mean load `T * k / n`.

    Returns:
        A list of capacities, increasing, ending with `T` (no expert can hold
        more: a token picks an expert at most once).
    """
    if isinstance(num_tokens, int):
        mean = num_tokens * top_k / num_experts
        rungs = {min(num_tokens, max(1, math.ceil(f * mean))) for f in factors}
        return sorted(rungs | {num_tokens})
    tokens = ops.cast(num_tokens, "float32")
    mean = tokens * top_k / num_experts
    rungs = [
        ops.cast(ops.clip(ops.ceil(f * mean), 1.0, tokens), "int32") for f in factors
    ]
    return rungs + [ops.cast(num_tokens, "int32")]


def sorted_dispatch_plan(choices, expert_indices, num_experts, capacity):
    """The capacity path's `DispatchPlan` for a capacity that drops nothing.

    Built from the sort by gathers alone: slot `(e, c)` holds the choice
    `order[offset_e + c]` when `c < group_sizes[e]`, and choice `(t, j)`
    sits in slot `i[t, j] * capacity + positions[t, j]`.

    Args:
        choices: `SortedChoices` of `expert_indices`.
        expert_indices: `(T, k)` int32 selected experts.
        num_experts: routed experts `n`.
        capacity: slots per expert, at least the largest group size.

    Returns:
        A `DispatchPlan` with `n * capacity` slots.
    """
    num_choices = ops.shape(choices.order)[0]
    offsets = ops.cumsum(choices.group_sizes) - choices.group_sizes
    slot = ops.cumsum(ops.ones((num_experts * capacity,), "int32")) - 1
    expert = slot // capacity
    rank = slot - expert * capacity
    occupied = rank < ops.take(choices.group_sizes, expert)
    source = ops.minimum(ops.take(offsets, expert) + rank, num_choices - 1)
    slot_choices = ops.where(occupied, ops.take(choices.order, source), num_choices)
    slot_ids = ops.where(
        choices.valid > 0,
        ops.cast(expert_indices, "int32") * capacity + choices.positions,
        num_experts * capacity,
    )
    return DispatchPlan(slot_choices, slot_ids)


def bucketed_mixture(tokens, expert_indices, expert_weights, choices, run_experts, num_experts, capacities,
                     overflow=None, rematerialize=True):
    """Dropless mixture of the routed experts on the smallest rung that fits.

    Args:
        tokens: `(T, d)` tokens.
        expert_indices: `(T, k)` int32 selected experts.
        expert_weights: `(T, k)` mixing weights.
        choices: `SortedChoices` of `expert_indices`.
        run_experts: function `(buffers, layout) -> outputs`: the experts
            on `(n, C, d)` buffers, giving `(n, C, u)`; `layout` lays any
            per-choice `(T * k, h)` tensor (a dropout mask) out like the
            buffers, `(n, C, h)`.
        num_experts: routed experts `n`.
        capacities: `bucket_capacities(...)`, or its first rungs when
            `overflow` is given.
        overflow: optional function `(tokens, expert_weights) -> (T, u)`,
            the same mixture by another engine, run when the busiest expert
            holds more than the last capacity.
        rematerialize: on JAX, recompute the taken rung in the backward
            pass instead of keeping every rung's activations. Only a call
            that will be differentiated needs it; inference leaves it off,
            since the checkpointed branches also run slower forward.

    Returns:
        `(T, u)`: `sum_j w[t, j] * E_{i[t, j]}(x_t)`; zeros for masked tokens.
    """
    busiest = ops.max(choices.group_sizes)
    rung = ops.sum(ops.cast(ops.stack(capacities) < busiest, "int32"))

    def branch(capacity):
        def mixture(tokens, expert_weights):
            plan = sorted_dispatch_plan(
                choices, expert_indices, num_experts, capacity
            )
            buffers = gather_tokens(tokens, plan, num_experts)

            def layout(values):
                values = take_rows(values, plan.slot_choices)
                return ops.reshape(values, (num_experts, -1, values.shape[-1]))

            return combine_slots(
                run_experts(buffers, layout), plan, expert_weights, choices.valid
            )

        return mixture

    branches = [branch(capacity) for capacity in capacities]
    if overflow is not None:
        branches.append(overflow)
    if len(branches) == 1:
        return branches[0](tokens, expert_weights)
    if rematerialize and keras.backend.backend() == "jax":
        import jax

        # Reverse-mode `lax.switch` keeps the union of every branch's
        # residuals (the `(n, T, h)` activations of the last rung included,
        # zero-filled); rematerialised branches keep only their inputs, the
        # same for all rungs, and recompute the taken rung's forward.
        branches = [jax.checkpoint(b) for b in branches]
    return ops.switch(rung, branches, tokens, expert_weights)
