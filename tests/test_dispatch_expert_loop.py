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


def test_only_tensorflow_loops_over_groups():
    assert dispatch.loops_over_groups() == (keras.backend.backend() == "tensorflow")


@pytest.fixture
def tensorflow_backend():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the loop over sorted rows is TensorFlow's")
    import tensorflow as tf

    return tf


def two_layer_expert(rows, weights, scale):
    """An MLP expert whose hidden units are scaled by a per-row tensor."""
    hidden = keras.ops.relu(keras.ops.matmul(rows, weights["hidden"])) * scale
    return keras.ops.matmul(hidden, weights["kernel"])


# Empty groups, one group with every row, and rows past every group.
MAP_GROUP_SIZES = {"empty_groups": [3, 0, 6, 0], "one_group_takes_all": [0, 9, 0, 0],
                   "every_row_in_a_group": [4, 2, 3, 2]}


@pytest.mark.parametrize("sizes", MAP_GROUP_SIZES.values(), ids=MAP_GROUP_SIZES.keys())
def test_map_groups_runs_each_expert_on_its_own_rows(tensorflow_backend, sizes):
    tf = tensorflow_backend
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(11, 4)).astype("float32")
    scale = rng.uniform(size=(11, 5)).astype("float32")  # laid out like the rows
    weights = {"hidden": rng.normal(size=(4, 4, 5)).astype("float32"),
               "kernel": rng.normal(size=(4, 5, 3)).astype("float32")}
    upstream = rng.normal(size=(11, 3)).astype("float32")
    expected = np.zeros((11, 3), "float32")
    start = 0
    for e, size in enumerate(sizes):
        part = slice(start, start + size)
        hidden = np.maximum(rows[part] @ weights["hidden"][e], 0) * scale[part]
        expected[part] = hidden @ weights["kernel"][e]
        start += size
    # Group sizes known only when the graph runs, as in `fit` and `predict`.
    function = tf.function(
        lambda r, s, g, w: dispatch.map_groups(two_layer_expert, r, g, w, s),
        input_signature=[tf.TensorSpec((None, 4)), tf.TensorSpec((None, 5)), tf.TensorSpec((4,), tf.int32),
                         {n: tf.TensorSpec(w.shape) for n, w in weights.items()}])
    sizes = np.array(sizes, "int32")
    np.testing.assert_allclose(function(rows, scale, sizes, weights).numpy(), expected, rtol=1e-5, atol=1e-5)
    # Gradients against the same product written as one dense expression:
    # each row through its own expert's weights, rows past the groups zero.
    expert_of_row = np.repeat(np.arange(4), sizes)
    valid = np.arange(11) < sizes.sum()
    one_hot = np.zeros((11, 4), "float32")
    one_hot[np.arange(len(expert_of_row)), expert_of_row] = 1.0
    variables = [tf.constant(rows), tf.constant(weights["hidden"]), tf.constant(weights["kernel"])]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(variables)
        r, h, k = variables
        ours = tf.reduce_sum(dispatch.map_groups(two_layer_expert, r, sizes, {"hidden": h, "kernel": k}, scale)
                             * upstream)
        hidden = tf.nn.relu(tf.einsum("rd,re,edh->rh", r, one_hot, h)) * scale
        dense = tf.einsum("rh,re,ehu->ru", hidden, one_hot, k) * valid[:, None].astype("float32")
        reference = tf.reduce_sum(dense * upstream)
    for got, want in zip(tape.gradient(ours, variables), tape.gradient(reference, variables)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_tensorflow_layers_run_the_sorted_rows_through_map_groups(tensorflow_backend, monkeypatch):
    from moe_keras import MoEConv2D

    from moe_keras.dispatch import grouped

    calls = []
    loop = dispatch.map_groups
    # MoEDense calls it for its whole MLP, MoEConv2D through grouped_matmul.
    for module in (dispatch, grouped):
        monkeypatch.setattr(module, "map_groups", lambda *args: calls.append(1) or loop(*args))
    x = np.random.default_rng(3).normal(size=(8, 6)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), MoEDense(4, num_experts=8, top_k=2, expert_hidden=5),
                              keras.layers.Dense(1)])
    model.compile("adam", "mse")
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    model.predict(x, verbose=0)
    assert len(calls) >= 2  # traced for the train step and for predict
    calls.clear()
    conv = MoEConv2D(3, 3, num_experts=8, top_k=2, routing="pixel", dispatch="sparse")
    conv(np.zeros((2, 5, 5, 2), "float32"))
    assert calls


def test_expert_dropout_on_sorted_rows_equals_it_on_buffers(tensorflow_backend, monkeypatch):
    # The per-choice dropout mask, split with the rows, drops the same
    # hidden units as the bucket engine's buffers drop (same seed, same
    # draws): the layout is the only difference.
    x = np.random.default_rng(4).normal(size=(32, 6)).astype("float32")

    def dropped_output():
        keras.utils.set_random_seed(0)
        layer = MoEDense(4, num_experts=8, top_k=2, expert_hidden=16, expert_dropout=0.5, seed=3)
        return keras.ops.convert_to_numpy(layer(x, training=True))

    rows = dropped_output()
    monkeypatch.setattr(expert_loop, "GROUP_LOOP_BACKENDS", ())
    assert not dispatch.loops_over_groups()
    buffers = dropped_output()
    np.testing.assert_allclose(rows, buffers, rtol=1e-5, atol=1e-5)
    monkeypatch.undo()
    keras.utils.set_random_seed(0)
    undropped = MoEDense(4, num_experts=8, top_k=2, expert_hidden=16, seed=3)
    assert not np.allclose(rows, keras.ops.convert_to_numpy(undropped(x, training=True)), atol=1e-3)
