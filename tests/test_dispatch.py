"""Sparse dispatch: slot tables, capacity dropping, equality with dense."""

import keras
import numpy as np
import pytest
from keras import ops

from moe_keras import dispatch
from moe_keras import routing


def np_(x):
    return ops.convert_to_numpy(x)


def route(probs, k, capacity):
    weights, indices = routing.top_k_routing(probs, k, normalize=True)
    positions, keep = routing.assign_capacity(indices, probs.shape[-1], capacity)
    return weights, indices, positions, keep


def random_problem(seed, num_tokens, features, units, num_experts, k, capacity):
    """Random tokens, expert kernels and their routing:
    `(tokens, kernels, weights, indices, positions, keep)`."""
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(num_tokens, features)).astype("float32")
    kernels = rng.normal(size=(num_experts, features, units)).astype("float32")
    logits = rng.normal(size=(num_tokens, num_experts)).astype("float32")
    probs = np_(routing.router_probabilities(logits))
    return (tokens, kernels, *route(probs, k, capacity))


def sparse_mixture(tokens, kernels, plan, weights, keep):
    """Linear experts through the sparse path: gather, matmul, combine."""
    buffers = dispatch.gather_tokens(tokens, plan, kernels.shape[0])
    outputs = ops.einsum("etd,edu->etu", buffers, kernels)
    return dispatch.combine_slots(outputs, plan, weights, keep)


def test_capacity_drops_exactly_the_tokens_beyond_capacity():
    # 6 tokens, all prefer expert 0; capacity 2 -> tokens 0, 1 kept, 2..5 dropped.
    probs = np.tile(np.array([[0.9, 0.1]], "float32"), (6, 1))
    weights, indices, positions, keep = route(probs, 1, capacity=2)
    np.testing.assert_array_equal(np_(keep)[:, 0], [1, 1, 0, 0, 0, 0])
    plan = dispatch.sparse_dispatch_plan(indices, positions, keep, 2, 2)
    # Expert 0 holds choices (= tokens, k=1) 0 and 1; expert 1 is empty
    # (sentinel T * k = 6).
    np.testing.assert_array_equal(np_(plan.slot_choices), [0, 1, 6, 6])
    # Dropped choices point past the 4 slots.
    np.testing.assert_array_equal(np_(plan.slot_ids)[:, 0], [0, 1, 4, 4, 4, 4])
    tokens = np.arange(12, dtype="float32").reshape(6, 2) + 1
    buffers = dispatch.gather_tokens(tokens, plan, 2)
    np.testing.assert_allclose(np_(buffers)[1], 0.0)  # empty slots gather zeros
    mixed = np_(dispatch.combine_slots(buffers, plan, weights, keep))
    np.testing.assert_allclose(mixed[:2], tokens[:2])
    np.testing.assert_allclose(mixed[2:], 0.0)  # dropped tokens get nothing


def test_sparse_equals_dense_when_nothing_is_dropped():
    tokens, kernels, weights, indices, positions, keep = random_problem(1, 10, 3, 5, 4, 2, capacity=10)
    combine = routing.combine_weights(weights, indices, 4, keep)
    dense = np_(dispatch.dense_combine(ops.einsum("td,edu->etu", tokens, kernels), combine))
    plan = dispatch.sparse_dispatch_plan(indices, positions, keep, 4, 10)
    sparse = np_(sparse_mixture(tokens, kernels, plan, weights, keep))
    np.testing.assert_allclose(sparse, dense, rtol=1e-5, atol=1e-5)
    # And both equal the per-token hand computation.
    by_hand = np.stack([
        sum(np_(weights)[t, j] * tokens[t] @ kernels[np_(indices)[t, j]] for j in range(2))
        for t in range(10)
    ])
    np.testing.assert_allclose(dense, by_hand, rtol=1e-5, atol=1e-5)


def test_plan_maps_choices_to_slots_and_back():
    # 5 tokens, k=2, 3 experts with capacity 2: some second choices drop.
    indices = np.array([[0, 1], [0, 2], [1, 0], [0, 1], [2, 1]], "int32")
    positions, keep = routing.assign_capacity(indices, 3, 2)
    plan = dispatch.sparse_dispatch_plan(indices, positions, keep, 3, 2)
    slot_choices, slot_ids = np_(plan.slot_choices), np_(plan.slot_ids)
    for t in range(5):
        for j in range(2):
            slot = slot_ids[t, j]
            if np_(keep)[t, j]:
                assert slot // 2 == indices[t, j]
                assert slot_choices[slot] == t * 2 + j
            else:
                assert slot == 6
    # Every occupied slot points back at the choice that points at it.
    for slot, choice in enumerate(slot_choices):
        if choice < 10:
            assert slot_ids.reshape(-1)[choice] == slot


def sparse_gradients(tokens, kernels, weights, indices, keep, plan, use_plan_gradient):
    """Gradients of a sparse mixture w.r.t. tokens, kernels and weights,
    through `gather_tokens`/`combine_slots` (the plan's gather gradients) or
    through plain `ops.take` (autodiff's scatter-add gradients)."""
    num_experts = kernels.shape[0]
    top_k = indices.shape[-1]

    def mixture(tokens, kernels, weights):
        if use_plan_gradient:
            mixed = sparse_mixture(tokens, kernels, plan, weights, keep)
        else:
            padded = ops.concatenate([tokens, ops.zeros((1, tokens.shape[-1]))])
            buffers = ops.take(padded, plan.slot_choices // top_k, axis=0)
            buffers = ops.reshape(buffers, (num_experts, -1, tokens.shape[-1]))
            outputs = ops.einsum("etd,edu->etu", buffers, kernels)
            flat = ops.reshape(outputs, (-1, outputs.shape[-1]))
            flat = ops.concatenate([flat, ops.zeros((1, flat.shape[-1]))])
            chosen = ops.take(flat, ops.reshape(plan.slot_ids, (-1,)), axis=0)
            chosen = ops.reshape(chosen, (-1, top_k, flat.shape[-1]))
            mixed = ops.einsum("tku,tk->tu", chosen, weights * keep)
        return ops.sum(ops.sin(mixed))

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.grad(mixture, argnums=(0, 1, 2))(tokens, kernels, weights)
    if backend == "tensorflow":
        import tensorflow as tf

        variables = [tf.constant(v) for v in (tokens, kernels, weights)]
        with tf.GradientTape() as tape:
            tape.watch(variables)
            value = mixture(*variables)
        return [tf.convert_to_tensor(g) for g in tape.gradient(value, variables)]
    if backend == "torch":
        import torch

        variables = [torch.tensor(v, requires_grad=True) for v in (tokens, kernels, weights)]
        return torch.autograd.grad(mixture(*variables), variables)
    pytest.skip(f"no gradient helper for the {backend} backend")


def test_plan_gradients_equal_autodiff_gradients_with_dropped_choices():
    tokens, kernels, weights, indices, positions, keep = random_problem(3, 9, 3, 2, 4, 2, capacity=3)
    assert 0 < np_(keep).mean() < 1  # some choices dropped, some kept
    plan = dispatch.sparse_dispatch_plan(indices, positions, keep, 4, 3)
    weights = np_(weights)
    ours = sparse_gradients(tokens, kernels, weights, indices, keep, plan, True)
    reference = sparse_gradients(tokens, kernels, weights, indices, keep, plan, False)
    for got, expected in zip(ours, reference):
        np.testing.assert_allclose(np_(got), np_(expected), rtol=1e-5, atol=1e-6)
    assert np.abs(np_(ours[0])).sum() > 0
