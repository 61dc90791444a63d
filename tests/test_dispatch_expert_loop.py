"""Stacked experts one at a time (`moe_keras.dispatch.expert_loop`): when it
applies, and that it computes what the batched einsum does."""

import keras
import numpy as np
import pytest

from moe_keras import MoEDense
from moe_keras import dispatch
from moe_keras.dispatch import expert_loop


def test_only_jax_cpu_inference_loops():
    assert not dispatch.loops_over_experts(training=True)
    assert dispatch.loops_over_experts(training=False) == (keras.backend.backend() == "jax")


@pytest.fixture
def jax_backend():
    if keras.backend.backend() != "jax":
        pytest.skip("the loop is JAX's")


def test_map_experts_equals_each_experts_own_product(jax_backend):
    rng = np.random.default_rng(0)
    buffers = rng.normal(size=(3, 5, 4)).astype("float32")
    weights = {"kernel": rng.normal(size=(3, 4, 2)).astype("float32"),
               "bias": rng.normal(size=(3, 2)).astype("float32")}
    got = np.asarray(dispatch.map_experts(lambda x, w: x @ w["kernel"] + w["bias"], buffers, weights))
    for e in range(3):
        np.testing.assert_allclose(got[e], buffers[e] @ weights["kernel"][e] + weights["bias"][e], rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("hidden", [None, 6])
def test_inference_through_the_loop_equals_the_batched_einsum(jax_backend, monkeypatch, hidden):
    x = np.random.default_rng(1).normal(size=(4, 7, 5)).astype("float32")
    layer = MoEDense(3, num_experts=6, top_k=2, expert_hidden=hidden, dispatch="sparse", activation="relu")
    calls = []
    loop = dispatch.map_experts
    monkeypatch.setattr(dispatch, "map_experts", lambda *args: calls.append(1) or loop(*args))
    looped = np.asarray(layer(x))
    assert calls  # every bucket rung runs through the loop
    looped_calls = len(calls)
    monkeypatch.setattr(expert_loop, "LOOP_PLATFORMS", ())
    batched = np.asarray(layer(x))
    assert len(calls) == looped_calls and np.abs(looped).max() > 0
    np.testing.assert_allclose(looped, batched, rtol=1e-5, atol=1e-5)
