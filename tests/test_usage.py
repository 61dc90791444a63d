"""Routing statistics and class x expert counts."""

import math

import keras
import numpy as np
import pytest

from moe_keras import MoEDense
from moe_keras.usage import moe_layers
from moe_keras.usage import routing_counts
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


def test_routing_counts_matches_the_layer_choices():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, name="trunk")(inputs)
    moe = MoEDense(3, num_experts=3, top_k=2, name="moe")
    model = keras.Model(inputs, moe(hidden))
    assert moe_layers(model) == [moe]
    x = np.random.default_rng(0).normal(size=(20, 4)).astype("float32")
    y = np.arange(20) % 4
    counts = routing_counts(model, x, y, batch_size=7)
    assert counts.shape == (4, 3)
    assert counts.sum() == 20 * 2  # every example counted once per choice
    choices = keras.ops.convert_to_numpy(moe.expert_choices(model.get_layer("trunk")(x)))
    expected = np.zeros((4, 3), int)
    for label, row in zip(y, choices):
        for expert in row:
            expected[label, expert] += 1
    np.testing.assert_array_equal(counts, expected)


def test_routing_counts_needs_an_moe_layer():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no MoE layer"):
        routing_counts(model, np.zeros((2, 2)), np.zeros(2))
