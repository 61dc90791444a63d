"""Sparse upcycling: `MoEDense.from_dense` and `moe_keras.upcycle`."""

import keras
import numpy as np
import pytest
from keras import ops

from moe_keras import MoEDense
from moe_keras import upcycle


def built_dense(units, input_dim, **kwargs):
    layer = keras.layers.Dense(units, **kwargs)
    layer.build((None, input_dim))
    rng = np.random.default_rng(units)
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])
    return layer


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_from_dense_linear_experts_reproduce_the_layer(top_k):
    dense = built_dense(5, 6, activation="tanh")
    moe = MoEDense.from_dense(dense, num_experts=4, top_k=top_k)
    x = np.random.default_rng(0).normal(size=(3, 7, 6)).astype("float32")
    expected = np.tanh(x @ ops.convert_to_numpy(dense.kernel) + ops.convert_to_numpy(dense.bias))
    np.testing.assert_allclose(ops.convert_to_numpy(moe(x)), expected, rtol=1e-5, atol=1e-5)
    # Every expert is a copy, and the router is a fresh one that spreads tokens.
    kernels = ops.convert_to_numpy(moe.experts["kernel"])
    assert all(np.array_equal(k, ops.convert_to_numpy(dense.kernel)) for k in kernels)
    assert len(np.unique(ops.convert_to_numpy(moe.expert_choices(x))[..., 0])) > 1


@pytest.mark.parametrize("top_k", [1, 3])
def test_from_dense_mlp_pair_reproduces_the_pair(top_k):
    first = built_dense(9, 6, activation="relu")
    second = built_dense(4, 9)
    moe = MoEDense.from_dense(first, num_experts=3, top_k=top_k, output_layer=second)
    assert moe.expert_hidden == 9 and moe.units == 4
    x = np.random.default_rng(1).normal(size=(10, 6)).astype("float32")
    hidden = np.maximum(x @ ops.convert_to_numpy(first.kernel) + ops.convert_to_numpy(first.bias), 0)
    expected = hidden @ ops.convert_to_numpy(second.kernel) + ops.convert_to_numpy(second.bias)
    np.testing.assert_allclose(ops.convert_to_numpy(moe(x)), expected, rtol=1e-5, atol=1e-5)


def test_from_dense_rejects_what_it_cannot_copy():
    with pytest.raises(ValueError, match="must be built"):
        MoEDense.from_dense(keras.layers.Dense(3), 2)
    with pytest.raises(ValueError, match="keras.layers.Dense"):
        MoEDense.from_dense(keras.layers.Conv2D(3, 1), 2)
    with pytest.raises(ValueError, match="takes 5 inputs"):
        MoEDense.from_dense(built_dense(4, 6), 2, output_layer=built_dense(3, 5))


def two_models():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(10, activation="relu", name="fc1")(inputs)
    h = keras.layers.Dense(5, name="fc2")(h)
    h = keras.layers.Dense(4, activation="tanh", name="fc3")(h)
    functional = keras.Model(inputs, keras.layers.Dense(2, name="head")(h))
    sequential = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="relu", name="a"),
        keras.layers.Dense(3, name="b"),
    ])
    return functional, sequential


@pytest.mark.parametrize("top_k", [1, 2])
def test_upcycled_models_predict_what_the_originals_predict(top_k):
    functional, sequential = two_models()
    x = np.random.default_rng(2).normal(size=(16, 6)).astype("float32")
    new = upcycle(functional, [("fc1", "fc2"), "fc3"], num_experts=4, top_k=top_k)
    assert [type(l).__name__ for l in new.layers] == ["InputLayer", "MoEDense", "Identity", "MoEDense", "Dense"]
    np.testing.assert_allclose(new.predict(x, verbose=0), functional.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    new_seq = upcycle(sequential, ["b"], num_experts=3, top_k=top_k)
    np.testing.assert_allclose(new_seq.predict(x, verbose=0), sequential.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    # The original is untouched and the copy trains on its own.
    new.compile(optimizer="sgd", loss="mse")
    new.fit(x, np.ones((16, 2)), epochs=2, verbose=0)
    assert not np.allclose(new.predict(x, verbose=0), functional.predict(x, verbose=0))


def test_upcycle_refuses_a_pair_that_is_not_a_chain():
    functional, _ = two_models()
    with pytest.raises(ValueError, match="exactly `fc1`'s output"):
        upcycle(functional, [("fc1", "fc3")], num_experts=2)


def test_upcycle_explains_bad_layer_lists():
    functional, _ = two_models()
    x = np.random.default_rng(2).normal(size=(4, 6)).astype("float32")
    # One name alone is one layer, not its characters.
    new = upcycle(functional, "fc3", num_experts=2)
    np.testing.assert_allclose(new.predict(x, verbose=0), functional.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="more than one entry"):
        upcycle(functional, [("fc1", "fc2"), ("fc2", "fc3")], num_experts=2)
    with pytest.raises(ValueError, match="more than one entry"):
        upcycle(functional, [("fc1", "fc2"), "fc2"], num_experts=2)
    with pytest.raises(ValueError, match="a pair"):
        upcycle(functional, [("fc1", "fc2", "fc3")], num_experts=2)


def test_from_dense_refuses_a_quantized_layer():
    layer = built_dense(4, 6)
    layer.quantize("int8")
    with pytest.raises(ValueError, match="quantized"):
        MoEDense.from_dense(layer, 2)
