"""Pipeline models: configs, names, shapes, parameter counts."""

import keras
import numpy as np
import pytest

from moe_keras import MoEConv2D
from moe_keras import MoEDense
from pipelines.models import ModelConfig
from pipelines.models import build_model
from pipelines.models import count_parameters


@pytest.mark.parametrize(
    "config,name",
    [
        (ModelConfig(), "cnn-moe3of5-h64-s0"),
        (ModelConfig(moe=None, hidden=192), "cnn-dense-h192"),
        (ModelConfig(arch="mlp", moe=(1, 3), hidden=32, shared=1), "mlp-moe1of3-h32-s1"),
        (ModelConfig(moe=(2, 5), conv_moe=(2, 4), augment=False), "cnn-moe2of5-h64-s0-conv2of4-noaug"),
    ],
)
def test_run_names_spell_the_config(config, name):
    assert config.name == name


@pytest.mark.parametrize(
    "kwargs,message",
    [({"arch": "rnn"}, "architecture"), ({"moe": (6, 5)}, "1 <= K <= N"),
     ({"arch": "mlp", "conv_moe": (1, 2)}, "cnn")],
)
def test_invalid_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_cnn_moe_model_predicts_probabilities_and_counts_active_params():
    model = build_model(ModelConfig(moe=(3, 5), hidden=64, shared=1, conv_moe=(2, 4)))
    probabilities = model.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0)
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    assert isinstance(model.get_layer("moe"), MoEDense)
    assert isinstance(model.get_layer("moe_conv2"), MoEConv2D)
    total, active = count_parameters(model)
    assert total == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    # Active = total minus, per MoE layer, the experts an input does not use.
    unused = 0
    for name in ("moe", "moe_conv2"):
        layer = model.get_layer(name)
        size = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
        unused += size - layer.count_params_per_token()
    assert total - active == unused > 0
    moe = model.get_layer("moe")
    expert = 3136 * 64 + 64 + 64 * 128 + 128
    assert moe.count_params_per_token() == 3136 * 5 + 3 * expert + expert


def test_dense_baseline_h192_matches_moe35_h64_active_size():
    """The grid's second baseline has the active parameters of MoE(3,5) h64."""
    _, moe_active = count_parameters(build_model(ModelConfig(moe=(3, 5), hidden=64)))
    dense_total, dense_active = count_parameters(build_model(ModelConfig(moe=None, hidden=192)))
    assert dense_total == dense_active
    assert abs(moe_active - dense_active) / dense_active < 0.05


def test_mlp_baseline_is_784_128_64_10():
    model = build_model(ModelConfig(arch="mlp", moe=None))
    dense = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [128, 64, 10]


def test_loss_free_bias_defaults_on_for_k_above_one_only():
    from pipelines.models import resolve_routing

    assert resolve_routing({}, 2)["bias_update_rate"] == 1e-3
    assert resolve_routing({"bias_update_rate": None}, 1)["bias_update_rate"] == 0.0
    assert resolve_routing({"bias_update_rate": 0.01}, 1)["bias_update_rate"] == 0.01
    model = build_model(ModelConfig(moe=(1, 5), conv_moe=(2, 4)))
    assert model.get_layer("moe").bias_update_rate == 0.0
    assert model.get_layer("moe_conv2").bias_update_rate == 1e-3


def test_pipeline_routes_with_the_cosine_router_unless_told_otherwise():
    model = build_model(ModelConfig(moe=(3, 5), conv_moe=(2, 4)))
    assert model.get_layer("moe").router_type == "cosine"
    assert model.get_layer("moe_conv2").router_type == "cosine"
    linear = build_model(ModelConfig(moe=(3, 5), routing={"router_type": "linear"}))
    assert linear.get_layer("moe").router_type == "linear"


def test_hidden_dropout_reaches_experts_and_dense_baseline():
    moe = build_model(ModelConfig(moe=(3, 5), hidden_dropout=0.3))
    assert moe.get_layer("moe").expert_dropout == 0.3
    dense = build_model(ModelConfig(moe=None, hidden=192, hidden_dropout=0.3))
    assert dense.get_layer("dropout_hidden").rate == 0.3
    assert ModelConfig(moe=None, hidden_dropout=0.3).name == "cnn-dense-h64-hdrop0.3"
    with pytest.raises(ValueError, match="hidden_dropout"):
        ModelConfig(hidden_dropout=1.0)
