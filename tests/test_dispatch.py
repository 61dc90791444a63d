"""Sparse dispatch: slot tables, capacity dropping, equality with dense."""

import numpy as np
from keras import ops

from moe_keras import dispatch
from moe_keras import routing


def np_(x):
    return ops.convert_to_numpy(x)


def route(probs, k, capacity):
    weights, indices = routing.top_k_routing(probs, k, normalize=True)
    positions, keep = routing.assign_capacity(indices, probs.shape[-1], capacity)
    return weights, indices, positions, keep


def test_capacity_drops_exactly_the_tokens_beyond_capacity():
    # 6 tokens, all prefer expert 0; capacity 2 -> tokens 0, 1 kept, 2..5 dropped.
    probs = np.tile(np.array([[0.9, 0.1]], "float32"), (6, 1))
    weights, indices, positions, keep = route(probs, 1, capacity=2)
    np.testing.assert_array_equal(np_(keep)[:, 0], [1, 1, 0, 0, 0, 0])
    table, slot_ids = dispatch.sparse_dispatch_plan(indices, positions, keep, 2, 2)
    # Expert 0 holds tokens 0 and 1; expert 1 is empty (sentinel 6).
    np.testing.assert_array_equal(np_(table), [[0, 1], [6, 6]])
    # Dropped choices point at the zero row past the 4 slots.
    np.testing.assert_array_equal(np_(slot_ids)[:, 0], [0, 1, 4, 4, 4, 4])
    tokens = np.arange(12, dtype="float32").reshape(6, 2) + 1
    buffers = dispatch.gather_tokens(tokens, table)
    np.testing.assert_allclose(np_(buffers)[1], 0.0)  # empty slots gather zeros
    mixed = np_(dispatch.combine_slots(buffers, slot_ids, weights, keep))
    np.testing.assert_allclose(mixed[:2], tokens[:2])
    np.testing.assert_allclose(mixed[2:], 0.0)  # dropped tokens get nothing


def test_sparse_equals_dense_when_nothing_is_dropped():
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(10, 3)).astype("float32")
    kernels = rng.normal(size=(4, 3, 5)).astype("float32")
    probs = np_(routing.router_probabilities(rng.normal(size=(10, 4)).astype("float32")))
    weights, indices, positions, keep = route(probs, 2, capacity=10)
    combine = routing.combine_weights(weights, indices, 4, keep)
    dense = np_(dispatch.dense_combine(ops.einsum("td,edu->etu", tokens, kernels), combine))
    table, slot_ids = dispatch.sparse_dispatch_plan(indices, positions, keep, 4, 10)
    buffers = dispatch.gather_tokens(tokens, table)
    sparse = np_(dispatch.combine_slots(ops.einsum("etd,edu->etu", buffers, kernels), slot_ids, weights, keep))
    np.testing.assert_allclose(sparse, dense, rtol=1e-5, atol=1e-5)
    # And both equal the per-token hand computation.
    by_hand = np.stack([
        sum(np_(weights)[t, j] * tokens[t] @ kernels[np_(indices)[t, j]] for j in range(2))
        for t in range(10)
    ])
    np.testing.assert_allclose(dense, by_hand, rtol=1e-5, atol=1e-5)
