"""Pipeline models: configs, names, shapes, parameter counts."""

from dataclasses import replace

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
        (ModelConfig(trunk="pool"), "cnn-moe3of5-h64-s0-pool"),
        (ModelConfig(trunk="deep"), "cnn-moe3of5-h64-s0-deep"),
        (ModelConfig(elastic=34.0), "cnn-moe3of5-h64-s0-el34"),
    ],
)
def test_run_names_spell_the_config(config, name):
    assert config.name == name


@pytest.mark.parametrize(
    "kwargs,message",
    [({"arch": "rnn"}, "architecture"), ({"moe": (6, 5)}, "1 <= K <= N"),
     ({"arch": "mlp", "conv_moe": (1, 2)}, "cnn"), ({"trunk": "resnet"}, "trunk"),
     ({"elastic": -1.0}, "elastic"), ({"elastic": 8.0, "augment": False}, "augmentation"),
     ({"arch": "mlp", "elastic": 8.0}, "cnn")],
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


def test_strided_trunk_halves_resolution_in_its_convs_not_by_pooling():
    pooled = build_model(ModelConfig(trunk="pool", augment=False))
    strided = build_model(ModelConfig(conv_moe=(1, 2), augment=False))
    assert not [layer for layer in strided.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert len([layer for layer in pooled.layers if isinstance(layer, keras.layers.MaxPooling2D)]) == 2
    assert strided.get_layer("conv1_2").strides == (2, 2)
    assert strided.get_layer("conv2_2").strides == (2, 2)
    # The MoE conv keeps stride 1; both trunks hand the MoE block 7 x 7 x 64.
    assert strided.get_layer("moe_conv2").strides == (1, 1)
    assert strided.get_layer("flatten").output.shape[-1] == 3136
    assert pooled.get_layer("flatten").output.shape[-1] == 3136
    # The conv weights are the same; only the resolution they run at differs.
    assert count_parameters(pooled) == count_parameters(build_model(ModelConfig(trunk="strided", augment=False)))


def test_deep_trunk_is_the_kaggle_entrys_and_hands_the_block_128_features():
    model = build_model(ModelConfig(trunk="deep", conv_moe=(2, 4), augment=False))
    convs = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, MoEConv2D))]
    # 32C3-32C3-32C5s2, 64C3-64C3-64C5s2, 128C4: 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4 -> 1.
    assert [(layer.filters, layer.kernel_size, layer.strides) for layer in convs] == [
        (32, (3, 3), (1, 1)), (32, (3, 3), (1, 1)), (32, (5, 5), (2, 2)),
        (64, (3, 3), (1, 1)), (64, (3, 3), (1, 1)), (64, (5, 5), (2, 2)),
        (128, (4, 4), (1, 1)),
    ]
    assert [tuple(layer.output.shape[1:3]) for layer in convs] == [
        (26, 26), (24, 24), (12, 12), (10, 10), (8, 8), (4, 4), (1, 1)]
    assert isinstance(model.get_layer("moe_conv2"), MoEConv2D)
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.4, 0.4, 0.25, 0.25]
    assert model.get_layer("flatten").output.shape[-1] == 128
    assert model.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0).shape == (2, 10)


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


def test_loss_free_bias_defaults_on_for_every_k():
    from pipelines.models import resolve_routing

    assert resolve_routing({})["bias_update_rate"] == 1e-3
    assert resolve_routing({"bias_update_rate": None})["bias_update_rate"] == 1e-3
    assert resolve_routing({"bias_update_rate": 0.0})["bias_update_rate"] == 0.0
    assert resolve_routing({"bias_update_rate": 0.01})["bias_update_rate"] == 0.01
    model = build_model(ModelConfig(moe=(1, 5), conv_moe=(2, 4)))
    assert model.get_layer("moe").bias_update_rate == 1e-3
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


def _layers(layer):
    for sublayer in getattr(layer, "layers", []):
        yield sublayer
        yield from _layers(sublayer)


def _seed_states(model):
    """`{layer.attribute: initial seed state}` of every SeedGenerator in the
    model: the seeds its random layers draw from (MoE layers own one for the
    router noise and one for the expert dropout)."""
    states = {}
    for layer in _layers(model):
        for attribute, value in vars(layer).items():
            if isinstance(value, keras.random.SeedGenerator):
                state = keras.ops.convert_to_numpy(value.state)
                states[f"{layer.name}.{attribute}"] = tuple(int(v) for v in state)
    return states


@pytest.mark.parametrize(
    "config,count",
    [
        # rotation, translation, zoom, conv router noise, feature dropout,
        # MoE router noise and expert dropout, head dropout
        (ModelConfig(conv_moe=(2, 4), hidden_dropout=0.2, routing={"router_noise": "gaussian"}), 8),
        # ... and the elastic distortion
        (ModelConfig(moe=None, hidden=32, elastic=8.0), 6),
        (ModelConfig(moe=None, hidden=32, hidden_dropout=0.3), 6),
        (ModelConfig(arch="mlp", moe=None, hidden_dropout=0.3), 1),
        (ModelConfig(arch="mlp", moe=(2, 3), hidden_dropout=0.3, routing={"router_noise": "gaussian"}), 2),
    ],
)
def test_no_two_random_layers_share_a_seed(config, count):
    states = _seed_states(build_model(config, seed=5))
    assert len(states) == count, sorted(states)
    assert len(set(states.values())) == count, states
    # The same run seed gives the same seeds; another run's are all different.
    assert _seed_states(build_model(config, seed=5)) == states
    assert not set(states.values()) & set(_seed_states(build_model(config, seed=6)).values())


def test_layer_seeds_are_distinct_ints_also_for_large_and_numpy_seeds():
    from pipelines.models import MAX_SEED
    from pipelines.models import layer_seeds

    for seed in (0, np.int64(1), "2", MAX_SEED):
        seeds = list(layer_seeds(seed))
        assert all(type(s) is int and 0 <= s < 2**31 for s in seeds)
        # MoEDense also uses seed + 1, so seeds are at least two apart.
        assert len({s + offset for s in seeds for offset in (0, 1)}) == 2 * len(seeds)
    with pytest.raises(ValueError, match="seed"):
        next(layer_seeds(-1))


def test_study_models_are_the_mlp_with_the_layers_own_routing():
    from pipelines.experiments import models as study

    baseline = build_model(replace(study.baseline(), input_shape=(784,)))
    assert [layer.units for layer in baseline.layers if isinstance(layer, keras.layers.Dense)] == [128, 64, 10]
    moe = build_model(replace(study.moe(4, 2, standardize=True, switch_loss_weight=0.1), input_shape=(3072,)))
    layer = moe.get_layer(study.MOE_LAYER_NAME)
    assert (layer.units, layer.num_experts, layer.top_k, layer.expert_hidden) == (64, 4, 2, 128)
    assert layer.switch_loss_weight == 0.1
    # Not the pipeline's cosine router and loss-free bias: the layer's defaults.
    assert layer.router_type == "linear" and not layer.bias_update_rate
    assert moe.input_shape == (None, 3072)
    scaled = moe.get_layer("standardize")(np.array([[0.1307, 1.0]], "float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scaled), [[0.0, (1 - 0.1307) / 0.3081]], rtol=1e-5)
    # 784 x n router plus n experts 784-128-64 plus the head, at k=1.
    total, _ = count_parameters(build_model(replace(study.moe(3), input_shape=(784,))))
    assert total == 784 * 3 + 3 * (784 * 128 + 128 + 128 * 64 + 64) + 64 * 10 + 10


def test_cnn_needs_image_inputs():
    with pytest.raises(ValueError, match="height, width, channels"):
        ModelConfig(input_shape=(784,))
    with pytest.raises(ValueError, match="routing_defaults"):
        ModelConfig(routing_defaults="mine")


def test_mlp_hidden_widens_the_mlp_baseline_and_names_it():
    config = ModelConfig(arch="mlp", moe=None, mlp_hidden=516)
    model = build_model(config)
    dense = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [516, 64, 10]
    assert config.name == "mlp-dense-h64-w516"


@pytest.mark.parametrize("routing", ["sample", "pixel"])
def test_conv_routing_reaches_the_moe_conv_layer(routing):
    config = ModelConfig(moe=None, conv_moe=(1, 4), conv_routing=routing)
    assert build_model(config).get_layer("moe_conv2").routing == routing
    assert config.name.endswith("conv1of4" if routing == "sample" else "conv1of4-pixel")


def test_unknown_conv_routing_is_refused():
    with pytest.raises(ValueError, match="conv_routing"):
        ModelConfig(conv_moe=(1, 2), conv_routing="token")
