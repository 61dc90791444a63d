"""Routing statistics and class x expert counts."""

import math

import keras
import numpy as np
import pytest

from moe_keras import MoEDense
from moe_keras.usage import moe_layers
from moe_keras.usage import routing_counts
from moe_keras.usage import routing_maps
from moe_keras.usage import summarize_counts


def test_summarize_balanced_and_collapsed_counts():
    balanced = summarize_counts([5, 5, 5, 5])
    assert balanced["load"] == [0.25] * 4
    assert balanced["entropy"] == pytest.approx(math.log(4))
    assert balanced["max_load_ratio"] == pytest.approx(1.0)
    assert balanced["dead_experts"] == 0
    collapsed = summarize_counts([0, 12, 0, 0], dropped_slots=3)
    assert collapsed["entropy"] == 0.0 and math.copysign(1, collapsed["entropy"]) == 1
    assert collapsed["max_load_ratio"] == pytest.approx(4.0)
    assert collapsed["dead_experts"] == 3
    assert collapsed["dropped_fraction"] == pytest.approx(3 / 12)
    assert summarize_counts([0, 0])["dead_experts"] == 2


# Router kernel (3 features -> 3 experts): logits = [-h0, h0, h1], so expert
# 1 takes h0 > 0, expert 0 takes h0 < 0, and expert 2 wins when h1 > |h0|.
ROUTER_KERNEL = np.array([[-1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], "float32")
# The trunk in front of the MoE layer negates its input: h = -x, so routing
# counts that read the model input instead of the layer's input come out wrong.
X = np.array([
    [-1, 0, 0],    # h = ( 1, 0, 0): logits [-1, 1, 0]   top-1 {1}, top-2 {1, 2}
    [2, 0, 0],     # h = (-2, 0, 0): logits [ 2,-2, 0]   top-1 {0}, top-2 {0, 2}
    [-1, -3, 0],   # h = ( 1, 3, 0): logits [-1, 1, 3]   top-1 {2}, top-2 {2, 1}
    [-0.5, 0, 5],  # h = (.5, 0,-5): logits [-.5,.5,0]   top-1 {1}, top-2 {1, 2}
    [1, -3, 0],    # h = (-1, 3, 0): logits [ 1,-1, 3]   top-1 {2}, top-2 {2, 0}
    [3, 0, 0],     # h = (-3, 0, 0): logits [ 3,-3, 0]   top-1 {0}, top-2 {0, 2}
    [-2, 0, 0],    # h = ( 2, 0, 0): logits [-2, 2, 0]   top-1 {1}, top-2 {1, 2}
], "float32")
Y = np.array([0, 0, 1, 1, 2, 2, 0])
# Class x expert counts written out from the comments above; class 3 has no
# example (num_classes=4).
EXPECTED = {
    1: [[1, 2, 0],
        [0, 1, 1],
        [1, 0, 1],
        [0, 0, 0]],
    2: [[1, 2, 3],
        [0, 2, 2],
        [2, 0, 2],
        [0, 0, 0]],
}


def controlled_model(top_k, sequence=False):
    shape = (2, 3) if sequence else (3,)
    inputs = keras.Input(shape)
    trunk = keras.layers.Dense(3, use_bias=False, name="trunk")
    moe = MoEDense(2, num_experts=3, top_k=top_k, name="moe")
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(moe(trunk(inputs))))
    trunk.kernel.assign(-np.eye(3, dtype="float32"))
    moe.router_kernel.assign(ROUTER_KERNEL)
    return model


@pytest.mark.parametrize("top_k", [1, 2])
def test_routing_counts_of_a_router_set_by_hand(top_k):
    model = controlled_model(top_k)
    counts = routing_counts(model, X, Y, num_classes=4, batch_size=3)  # batches 3 + 3 + 1
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, EXPECTED[top_k])
    # By name, and num_classes defaulting to max(y) + 1.
    np.testing.assert_array_equal(routing_counts(model, X, Y, layer="moe"), EXPECTED[top_k][:3])


def test_routing_counts_count_every_position_under_its_examples_label():
    # Example i holds rows X[i] and X[(i + 1) % 7] as its two positions.
    x = np.stack([X, np.roll(X, -1, axis=0)], axis=1)
    model = controlled_model(1, sequence=True)
    counts = routing_counts(model, x, Y, batch_size=4)
    # top-1 experts of X: [1, 0, 2, 1, 2, 0, 1]; second positions: [0, 2, 1, 2, 0, 1, 1].
    np.testing.assert_array_equal(counts, [[2, 3, 1], [0, 2, 2], [2, 1, 1]])


def test_routing_maps_give_each_positions_expert_shares():
    # Position 0 holds X (top-1 experts [1, 0, 2, 1, 2, 0, 1]); position 1
    # holds X[0] in every example (top-1 expert 1).
    x = np.stack([X, np.repeat(X[:1], len(X), axis=0)], axis=1)
    maps = routing_maps(controlled_model(1, sequence=True), x, batch_size=3)
    np.testing.assert_allclose(maps, [[2 / 7, 3 / 7, 2 / 7], [0, 1, 0]])


def test_routing_maps_of_a_top_2_layer_add_up_to_two_per_position():
    x = np.stack([X, np.roll(X, 2, axis=0)], axis=1)
    maps = routing_maps(controlled_model(2, sequence=True), x)
    np.testing.assert_allclose(maps.sum(axis=-1), [2.0, 2.0])
    # Rolling the examples leaves the shares of a position unchanged.
    np.testing.assert_allclose(maps[0], maps[1])


def test_routing_counts_needs_an_moe_layer():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no MoE layer"):
        routing_counts(model, np.zeros((2, 2)), np.zeros(2))


def test_routing_counts_and_maps_leave_out_masked_tokens():
    """With `Embedding(mask_zero=True)` upstream the layer's node has two
    inputs, the tokens and the mask: padding takes no expert, so it is
    neither counted nor a share of a position."""
    inputs = keras.Input((4,), dtype="int32")
    embedded = keras.layers.Embedding(6, 3, mask_zero=True)(inputs)
    moe = MoEDense(2, num_experts=3, top_k=2, name="moe")
    model = keras.Model(inputs, moe(embedded))
    x = np.array([[1, 2, 0, 0], [3, 4, 5, 0], [1, 1, 1, 1]])
    counts = routing_counts(model, x, [0, 1, 1], batch_size=2)
    np.testing.assert_array_equal(counts.sum(axis=1), [2 * 2, (3 + 4) * 2])
    maps = routing_maps(model, x, batch_size=2)
    np.testing.assert_allclose(maps.sum(axis=-1), [2.0, 2.0, 2.0, 2.0])


def test_routing_counts_explain_bad_arguments():
    model = controlled_model(1)
    with pytest.raises(ValueError, match="must be an MoE layer"):
        routing_counts(model, X, Y, layer="head")
    with pytest.raises(ValueError, match="one integer class label per input"):
        routing_counts(model, X, keras.utils.to_categorical(Y))  # one-hot
    with pytest.raises(ValueError, match="one integer class label per input"):
        routing_counts(model, X, Y[:3])
    with pytest.raises(ValueError, match=r"Labels must be in \[0, num_classes=2\)"):
        routing_counts(model, X, Y, num_classes=2)


class Holder(keras.layers.Layer):
    """A custom layer keeping one MoEDense as an attribute."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = MoEDense(4, num_experts=2, name="held")

    def call(self, x):
        return self.inner(x)


class ListHolder(keras.layers.Layer):
    """A custom layer keeping MoEDense layers in a list (the first one a
    second time under an attribute) and in a dict."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [MoEDense(4, num_experts=2, name=f"block_{i}") for i in range(2)]
        self.first = self.blocks[0]
        self.by_name = {"last": MoEDense(4, num_experts=2, name="in_dict")}

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return self.by_name["last"](x)


def names(layers):
    return [layer.name for layer in layers]


def test_moe_layers_finds_a_layer_held_as_an_attribute():
    holder = Holder()
    model = keras.Sequential([keras.Input((3,)), holder, keras.layers.Dense(2)])
    assert moe_layers(model) == [holder.inner]
    assert moe_layers(holder) == [holder.inner]


def test_moe_layers_finds_layers_held_in_a_list_and_a_dict_once_each():
    holder = ListHolder()
    model = keras.Sequential([keras.Input((3,)), holder])
    # block_0 is held twice (list and attribute) and listed once.
    assert moe_layers(model) == [holder.blocks[0], holder.blocks[1], holder.by_name["last"]]


def test_moe_layers_finds_a_layer_inside_a_nested_sequential():
    moe = MoEDense(4, num_experts=3, name="deep")
    inner = keras.Sequential([keras.layers.Dense(4), keras.Sequential([moe])])
    model = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(2)])
    assert moe_layers(model) == [moe]


def test_moe_layers_in_a_functional_model_outer_first_each_once():
    inputs = keras.Input((3,))
    first = MoEDense(4, num_experts=2, name="first")
    shared = MoEDense(4, num_experts=2, name="shared")
    holder = Holder(name="holder")
    nested = keras.Sequential([MoEDense(4, num_experts=2, name="nested")], name="nested_seq")
    x = shared(first(inputs))
    x = shared(x)  # called twice: still one layer
    x = nested(holder(x))
    model = keras.Model(inputs, x)
    assert names(moe_layers(model)) == ["first", "shared", "held", "nested"]
    assert moe_layers(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])) == []
