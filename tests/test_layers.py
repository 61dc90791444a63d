"""MoEDense and MoEConv2D: Keras's own layer harness, maths, training, saving.

Runs on whichever backend KERAS_BACKEND selects; CI runs this file under
TensorFlow and again under JAX.
"""

import os

import keras
import numpy as np
import pytest
from keras import ops
from keras.src import testing

from moe_keras import MoEConv2D
from moe_keras import MoEDense
from moe_keras.callbacks import ExpertUsage
from moe_keras.dispatch import loops_over_groups


def np_(x):
    return ops.convert_to_numpy(x)


class MoEDenseLayerTest(testing.TestCase):
    def test_basic(self):
        self.run_layer_test(
            MoEDense,
            init_kwargs={"units": 5, "num_experts": 4, "top_k": 2},
            input_shape=(8, 6),
            call_kwargs={"training": True},
            expected_output_shape=(8, 5),
            # router + kernel + bias
            expected_num_trainable_weights=3,
            # expert_counts, dropped_slots
            expected_num_non_trainable_weights=2,
            expected_num_seed_generators=0,
            expected_num_losses=1,
            supports_masking=True,
        )

    def test_mlp_experts_shared_noise_every_loss_sequence_input(self):
        # n / k = 4: the default dispatch is dropless sparse.
        self.run_layer_test(
            MoEDense,
            init_kwargs={
                "units": 5,
                "num_experts": 8,
                "top_k": 2,
                "expert_hidden": 7,
                "num_shared_experts": 1,
                "router_noise": "learned",
                "seed": 3,
                "importance_loss_weight": 0.01,
                "diversity_loss_weight": 0.01,
                "overflow_loss_weight": 0.01,
                "z_loss_weight": 0.001,
                "bias_update_rate": 0.001,
            },
            input_shape=(2, 3, 6),
            call_kwargs={"training": True},
            expected_output_shape=(2, 3, 5),
            # router, noise, 4 expert + 4 shared weights
            expected_num_trainable_weights=10,
            # selection_bias, expert_counts, dropped_slots
            expected_num_non_trainable_weights=3,
            expected_num_seed_generators=1,
            expected_num_losses=5,
        )

    def test_expert_dropout(self):
        # Dropless (n / k = 4): the dropout mask is drawn per token choice.
        self.run_layer_test(
            MoEDense,
            init_kwargs={
                "units": 5,
                "num_experts": 8,
                "top_k": 2,
                "expert_hidden": 7,
                "expert_dropout": 0.4,
                "seed": 1,
            },
            input_shape=(8, 6),
            call_kwargs={"training": True},
            expected_output_shape=(8, 5),
            expected_num_trainable_weights=5,
            expected_num_non_trainable_weights=2,
            # the dropout's generator (no router noise here)
            expected_num_seed_generators=1,
            expected_num_losses=1,
        )

    def test_cosine_router(self):
        self.run_layer_test(
            MoEDense,
            init_kwargs={
                "units": 5,
                "num_experts": 4,
                "top_k": 2,
                "router_type": "cosine",
                "router_temperature": 0.2,
            },
            input_shape=(8, 6),
            call_kwargs={"training": True},
            expected_output_shape=(8, 5),
            expected_num_trainable_weights=3,
            expected_num_non_trainable_weights=2,
            expected_num_seed_generators=0,
            expected_num_losses=1,
        )

    def test_sigmoid_router_with_loss_free_bias(self):
        self.run_layer_test(
            MoEDense,
            init_kwargs={
                "units": 5,
                "num_experts": 8,
                "top_k": 2,
                "router_activation": "sigmoid",
                "bias_update_rate": 0.001,
            },
            input_shape=(2, 4, 6),
            call_kwargs={"training": True},
            expected_output_shape=(2, 4, 5),
            expected_num_trainable_weights=3,
            # selection_bias, expert_counts, dropped_slots
            expected_num_non_trainable_weights=3,
            expected_num_seed_generators=0,
            expected_num_losses=1,
        )

    def test_expert_choice(self):
        self.run_layer_test(
            MoEDense,
            init_kwargs={
                "units": 5,
                "num_experts": 4,
                "top_k": 2,
                "expert_hidden": 3,
                "selection": "expert_choice",
                "z_loss_weight": 0.001,
            },
            input_shape=(2, 4, 6),
            call_kwargs={"training": True},
            expected_output_shape=(2, 4, 5),
            expected_num_trainable_weights=5,
            expected_num_non_trainable_weights=2,
            expected_num_seed_generators=0,
            # the z-loss only: expert choice is balanced by construction
            expected_num_losses=1,
        )

    def test_sparse_capacity(self):
        self.run_layer_test(
            MoEDense,
            init_kwargs={
                "units": 3,
                "num_experts": 8,
                "top_k": 1,
                "capacity_factor": 1.5,
                "dispatch": "sparse",
                "router_noise": "gaussian",
                "seed": 1,
            },
            input_shape=(16, 4),
            call_kwargs={"training": True},
            expected_output_shape=(16, 3),
            expected_num_trainable_weights=3,
            expected_num_non_trainable_weights=2,
            expected_num_seed_generators=1,
            expected_num_losses=1,
        )


class MoEConv2DLayerTest(testing.TestCase):
    def test_sample_routing_sparse(self):
        self.run_layer_test(
            MoEConv2D,
            # 4 experts: `dispatch="auto"` takes the CondConv path.
            init_kwargs={"filters": 4, "kernel_size": 3, "num_experts": 4, "top_k": 2},
            input_shape=(2, 8, 8, 3),
            call_kwargs={"training": True},
            expected_output_shape=(2, 6, 6, 4),
            expected_num_trainable_weights=3,
            expected_num_non_trainable_weights=2,
            expected_num_seed_generators=0,
            expected_num_losses=1,
        )

    def test_pixel_routing_shared_strides(self):
        self.run_layer_test(
            MoEConv2D,
            init_kwargs={
                "filters": 4,
                "kernel_size": 3,
                "num_experts": 3,
                "routing": "pixel",
                "num_shared_experts": 1,
                "strides": 2,
                "padding": "same",
                "z_loss_weight": 0.001,
            },
            input_shape=(2, 7, 7, 3),
            call_kwargs={"training": True},
            expected_output_shape=(2, 4, 4, 4),
            expected_num_trainable_weights=5,
            expected_num_non_trainable_weights=2,
            expected_num_losses=2,
        )

    def test_dense_dispatch_valid_padding_dilation(self):
        self.run_layer_test(
            MoEConv2D,
            init_kwargs={
                "filters": 2,
                "kernel_size": 3,
                "num_experts": 4,
                "dispatch": "dense",
                "dilation_rate": 2,
                "activation": "relu",
            },
            input_shape=(2, 9, 9, 2),
            call_kwargs={"training": True},
            expected_output_shape=(2, 5, 5, 2),
            expected_num_losses=1,
        )


# Maths --------------------------------------------------------------------

def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_top_k_equal_to_n_is_the_softmax_mixture_of_all_experts():
    x = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")
    layer = MoEDense(3, num_experts=4, top_k=4, normalize_top_k=False, expert_hidden=8)
    y = np_(layer(x))
    router = np_(layer.router_kernel)
    w1, b1 = np_(layer.experts["hidden_kernel"]), np_(layer.experts["hidden_bias"])
    w2, b2 = np_(layer.experts["kernel"]), np_(layer.experts["bias"])
    probs = softmax(x @ router)
    expected = sum(
        probs[:, [e]] * (np.maximum(x @ w1[e] + b1[e], 0) @ w2[e] + b2[e])
        for e in range(4)
    )
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_shared_experts_are_added_to_the_mixture():
    x = np.random.default_rng(1).normal(size=(6, 5)).astype("float32")
    layer = MoEDense(3, num_experts=2, num_shared_experts=2, top_k=1)
    y = np_(layer(x))
    probs = softmax(x @ np_(layer.router_kernel))
    top = probs.argmax(-1)
    w, b = np_(layer.experts["kernel"]), np_(layer.experts["bias"])
    sw, sb = np_(layer.shared_experts["kernel"]), np_(layer.shared_experts["bias"])
    expected = np.stack([probs[t, top[t]] * (x[t] @ w[top[t]] + b[top[t]]) for t in range(6)])
    expected += x @ sw[0] + sb[0] + x @ sw[1] + sb[1]
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dispatch", ["dense", "sparse"])
def test_shared_mlp_experts_are_added_to_the_mixture(dispatch):
    x = np.random.default_rng(5).normal(size=(6, 5)).astype("float32")
    layer = MoEDense(3, num_experts=3, num_shared_experts=2, top_k=1, expert_hidden=4, dispatch=dispatch)
    y = np_(layer(x))
    probs = softmax(x @ np_(layer.router_kernel))
    top = probs.argmax(-1)

    def mlp(weights, e, rows):
        hidden = np.maximum(rows @ np_(weights["hidden_kernel"])[e] + np_(weights["hidden_bias"])[e], 0)
        return hidden @ np_(weights["kernel"])[e] + np_(weights["bias"])[e]

    expected = np.stack([probs[t, top[t]] * mlp(layer.experts, top[t], x[t]) for t in range(6)])
    expected += mlp(layer.shared_experts, 0, x) + mlp(layer.shared_experts, 1, x)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hidden", [None, 6])
def test_dense_and_sparse_dispatch_agree(hidden):
    x = np.random.default_rng(2).normal(size=(4, 5, 6)).astype("float32")
    dense = MoEDense(4, num_experts=8, top_k=2, expert_hidden=hidden, dispatch="dense")
    dense.build(x.shape)
    sparse = MoEDense(4, num_experts=8, top_k=2, expert_hidden=hidden, dispatch="sparse")
    sparse.build(x.shape)
    sparse.set_weights(dense.get_weights())
    np.testing.assert_allclose(np_(sparse(x)), np_(dense(x)), rtol=1e-4, atol=1e-5)
    # With a tight capacity both drop the same slots and still agree.
    for layer in (dense, sparse):
        layer.capacity_factor = 0.5
        layer.switch_loss_weight = 0.0
    np.testing.assert_allclose(
        np_(sparse(x, training=True)), np_(dense(x, training=True)), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("path", ["accelerator_path", "torch_grouped_path"])
@pytest.mark.parametrize("hidden", [None, 8])
def test_dense_on_the_grouped_engine_equals_dense_dispatch(request, path, hidden):
    # JAX's ragged_dot or torch._grouped_mm, on the CPU; 8 features and 4
    # units keep torch's rows 16-byte aligned, as its kernel needs.
    kernel_calls = request.getfixturevalue(path)
    x = np.random.default_rng(3).normal(size=(4, 5, 8)).astype("float32")
    dense = MoEDense(4, num_experts=8, top_k=2, expert_hidden=hidden, num_shared_experts=1, dispatch="dense")
    dense.build(x.shape)
    sparse = MoEDense(4, num_experts=8, top_k=2, expert_hidden=hidden, num_shared_experts=1, dispatch="sparse")
    sparse.build(x.shape)
    sparse.set_weights(dense.get_weights())
    for training in (False, True):
        np.testing.assert_allclose(np_(sparse(x, training=training)), np_(dense(x, training=training)),
                                   rtol=1e-4, atol=1e-5)
    # One SGD step through `fit`'s compiled train step moves both alike, so
    # the gradients agree too (ragged_dot's own, against the dense einsum's).
    y = np.random.default_rng(4).normal(size=(4, 5, 4)).astype("float32")
    before = dense.get_weights()
    for layer in (dense, sparse):
        model = keras.Sequential([keras.Input(x.shape[1:]), layer])
        model.compile(keras.optimizers.SGD(0.5), "mse")
        model.train_on_batch(x, y)
    moved = [not np.allclose(a, b) for a, b in zip(before, dense.get_weights())]
    assert sum(moved) >= 3  # router and the experts' weights at least
    for got, want in zip(sparse.get_weights(), dense.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if path == "torch_grouped_path":
        # The expert matmuls of the three calls above (and of the model's
        # build) went through the kernel, on 20 tokens x 2 choices.
        assert len(kernel_calls) >= 3 * (1 if hidden is None else 2)
        assert all(rows[0] == 40 for rows, _ in kernel_calls)


@pytest.mark.parametrize("path", ["accelerator_path", "torch_grouped_path"])
def test_conv_pixel_on_the_grouped_engine_equals_dense_dispatch(request, path):
    # 3 x 3 x 4 = 36 patch features and 4 filters: torch-aligned rows.
    kernel_calls = request.getfixturevalue(path)
    x = np.random.default_rng(4).normal(size=(3, 9, 7, 4)).astype("float32")
    dense = MoEConv2D(4, num_experts=6, top_k=2, kernel_size=3, routing="pixel", dispatch="dense")
    dense.build(x.shape)
    sparse = MoEConv2D(4, num_experts=6, top_k=2, kernel_size=3, routing="pixel", dispatch="sparse")
    sparse.build(x.shape)
    sparse.set_weights(dense.get_weights())
    np.testing.assert_allclose(np_(sparse(x)), np_(dense(x)), rtol=1e-4, atol=1e-4)
    if path == "torch_grouped_path":
        # 3 images x 7 x 5 valid positions x 2 choices, one call.
        assert kernel_calls == [((210, 36), (6, 36, 4))]


def test_dropped_tokens_only_get_the_shared_experts():
    x = np.ones((6, 3), "float32")  # identical tokens all pick the same expert
    layer = MoEDense(2, num_experts=3, capacity_factor=1.0, num_shared_experts=1, dispatch="sparse")
    layer.build(x.shape)
    y = np_(layer(x, training=True))
    shared = np_(ops.sum(layer._run_experts(layer.shared_experts, x), axis=0))
    # capacity = ceil(6 * 1 / 3) = 2: tokens 2..5 dropped.
    np.testing.assert_allclose(y[2:], shared[2:], rtol=1e-5)
    assert not np.allclose(y[:2], shared[:2])
    assert layer.routing_stats()["dropped_fraction"] == pytest.approx(4 / 6)
    # Inference is dropless unless eval_capacity_factor caps it too.
    np.testing.assert_allclose(np_(layer(x)), np.tile(y[:1], (6, 1)), rtol=1e-5)
    layer.eval_capacity_factor = 1.0
    np.testing.assert_allclose(np_(layer(x)), y, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"strides": 2, "padding": "same"},
        {"strides": 2},
        {"dilation_rate": 2},
        {"dilation_rate": 2, "padding": "same"},
        # Even kernel, odd input, stride 2: "same" pads one more row at the end.
        {"kernel_size": 4, "strides": 2, "padding": "same"},
        {"kernel_size": (2, 3), "strides": (1, 2), "padding": "same"},
        {"data_format": "channels_first", "padding": "same"},
    ],
)
def test_conv_sparse_condconv_equals_dense_all_experts(kwargs):
    kwargs = {"kernel_size": 3, **kwargs}
    shape = (3, 2, 9, 7) if kwargs.get("data_format") == "channels_first" else (3, 9, 7, 2)
    x = np.random.default_rng(3).normal(size=shape).astype("float32")
    dense = MoEConv2D(5, num_experts=4, top_k=2, dispatch="dense", **kwargs)
    dense.build(x.shape)
    sparse = MoEConv2D(5, num_experts=4, top_k=2, dispatch="sparse", **kwargs)
    sparse.build(x.shape)
    sparse.set_weights(dense.get_weights())
    expected = np_(dense(x))
    assert expected.shape == tuple(dense.compute_output_shape(x.shape))
    np.testing.assert_allclose(np_(sparse(x)), expected, rtol=1e-4, atol=1e-4)


def test_conv_sparse_needs_static_image_size():
    layer = MoEConv2D(2, 3, num_experts=4, dispatch="sparse")
    with pytest.raises(ValueError, match="rows and columns"):
        layer.build((None, None, None, 3))
    auto = MoEConv2D(2, 3, num_experts=32)
    auto.build((None, None, None, 3))
    assert auto.resolved_dispatch == "dense"
    outputs = auto(np.zeros((1, 5, 6, 3), "float32"))
    assert outputs.shape == (1, 3, 4, 2)
    # With a known image size, "auto" takes CondConv from 4 experts on.
    for experts, expected in ((2, "dense"), (4, "sparse"), (32, "sparse")):
        layer = MoEConv2D(2, 3, num_experts=experts)
        layer.build((None, 8, 8, 3))
        assert layer.resolved_dispatch == expected
    # Pixel routing takes the dropless engine when n / k is above the
    # backend's bound (1.25 to 2, `strategy.DENSE_MAX_EXPERTS_PER_CHOICE`).
    for experts, top_k, expected in ((32, 1, "sparse"), (5, 4, "dense"), (6, 2, "sparse")):
        pixel = MoEConv2D(2, 3, num_experts=experts, top_k=top_k, routing="pixel")
        pixel.build((None, 8, 8, 3))
        assert pixel.resolved_dispatch == expected
    pixel = MoEConv2D(2, 3, num_experts=32, routing="pixel")
    pixel.build((None, None, None, 3))
    assert pixel.resolved_dispatch == "dense"


class Holder(keras.layers.Layer):
    """A layer that holds an MoE layer and defines no `compute_output_shape`,
    so Keras infers its output by tracing `call` with a symbolic batch."""

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner

    def call(self, inputs):
        return self.inner(inputs)


@pytest.mark.parametrize("inner, input_shape, output_shape", [
    (lambda: MoEDense(4, num_experts=8, top_k=2, expert_hidden=3), (3,), (4,)),
    (lambda: MoEConv2D(2, 3, num_experts=8, top_k=2, routing="pixel"), (6, 6, 2), (4, 4, 2)),
])
def test_a_held_dropless_layer_builds_and_trains_in_a_model(inner, input_shape, output_shape):
    # The symbolic batch of the shape inference has no static token count,
    # which the bucket engines need (JAX); the real calls still run dropless.
    layer = inner()
    model = keras.Sequential([keras.Input(input_shape), Holder(layer)])
    assert model.output_shape == (None, *output_shape)
    x = np.random.default_rng(5).normal(size=(4, *input_shape)).astype("float32")
    model.compile("sgd", "mse")
    model.fit(x, np.zeros((4, *output_shape)), epochs=1, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), np_(layer(x)), rtol=1e-5, atol=1e-5)


def test_conv_each_sample_uses_its_selected_expert_kernel():
    x = np.random.default_rng(4).normal(size=(2, 6, 6, 2)).astype("float32")
    layer = MoEConv2D(3, 3, num_experts=3, top_k=1, normalize_top_k=True, use_bias=False)
    y = np_(layer(x))
    choice = np_(layer.expert_choices(x))[:, 0]
    for b in range(2):
        single = np_(ops.conv(x[b : b + 1], layer.experts["kernel"][choice[b]]))
        np.testing.assert_allclose(y[b : b + 1], single, rtol=1e-4, atol=1e-5)


def test_conv_channels_first_matches_channels_last():
    x = np.random.default_rng(5).normal(size=(2, 7, 7, 3)).astype("float32")
    last = MoEConv2D(4, 3, num_experts=3, routing="pixel", data_format="channels_last")
    last.build(x.shape)
    first = MoEConv2D(4, 3, num_experts=3, routing="pixel", data_format="channels_first")
    first.build((2, 3, 7, 7))
    first.set_weights(last.get_weights())
    y_first = np_(first(np.transpose(x, (0, 3, 1, 2))))
    np.testing.assert_allclose(np.transpose(y_first, (0, 2, 3, 1)), np_(last(x)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"units": 0, "num_experts": 2}, "units"),
        ({"units": 2, "num_experts": 0}, "num_experts"),
        ({"units": 2, "num_experts": 2, "top_k": 3}, "top_k"),
        ({"units": 2, "num_experts": 2, "capacity_factor": 0}, "capacity_factor"),
        ({"units": 2, "num_experts": 2, "dispatch": "fast"}, "dispatch"),
        ({"units": 2, "num_experts": 2, "router_noise": "uniform"}, "router_noise"),
        ({"units": 2, "num_experts": 2, "switch_loss_weight": -1}, "switch_loss_weight"),
        ({"units": 2, "num_experts": 2, "num_shared_experts": -1}, "num_shared_experts"),
        ({"units": 2, "num_experts": 2, "expert_hidden": 4, "expert_dropout": 1.0}, "expert_dropout"),
        ({"units": 2, "num_experts": 2, "expert_dropout": 0.5}, "expert_hidden"),
        ({"units": 2, "num_experts": 2, "router_type": "sigmoid"}, "router_type"),
        ({"units": 2, "num_experts": 2, "router_temperature": 0}, "router_temperature"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoEDense(**kwargs)


@pytest.mark.parametrize("dispatch", ["dense", "sparse"])
def test_expert_dropout_drops_hidden_units_only_in_training(dispatch):
    keras.utils.set_random_seed(0)
    layer = MoEDense(
        3, num_experts=4, top_k=2, expert_hidden=64, expert_dropout=0.5,
        num_shared_experts=1, capacity_factor=2.0, dispatch=dispatch, seed=0,
    )
    reference = MoEDense(
        3, num_experts=4, top_k=2, expert_hidden=64, num_shared_experts=1,
        capacity_factor=2.0, dispatch=dispatch, seed=0,
    )
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    layer.build(x.shape)
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    # Inference ignores the rate; training draws a fresh mask every call.
    np.testing.assert_allclose(np_(layer(x)), np_(reference(x)), rtol=1e-5, atol=1e-6)
    first = np_(layer(x, training=True))
    second = np_(layer(x, training=True))
    assert not np.allclose(first, second)
    assert not np.allclose(first, np_(reference(x, training=True)))
    # Inverted dropout keeps the expected output: the mean over many masks
    # approaches the undropped output. The masks come from one call on 1,000
    # copies of the batch (each row draws its own mask; capacity_factor=2
    # with k=2 of 4 lets every expert hold every token, so no copy is
    # dropped): the sampling error is then 2-4% of the output, not 5-8% as
    # with 200 calls, which came near the 10% bound for some initialisations.
    copies = 1000
    mean = np_(layer(np.tile(x, (copies, 1)), training=True)).reshape(copies, len(x), 3).mean(axis=0)
    undropped = np_(reference(x, training=True))
    assert np.abs(mean - undropped).mean() < 0.1 * np.abs(undropped).mean()


@pytest.mark.parametrize("layer_class", ["dense", "conv"])
def test_cosine_router_logits_stay_bounded_when_inputs_grow(layer_class):
    keras.utils.set_random_seed(0)
    if layer_class == "dense":
        layer = MoEDense(4, num_experts=3, top_k=2, use_bias=False, router_type="cosine", router_temperature=0.25)
        x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    else:
        layer = MoEConv2D(4, 3, num_experts=3, top_k=2, use_bias=False, router_type="cosine", router_temperature=0.25)
        x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
    small = np_(layer(x))
    # The routing of x and 1000 x is the same: only the experts' outputs scale.
    # Compared at the scale of x: float32 rounding of the 1000 x convolution
    # (sums that cancel to ~0) exceeds an absolute 1e-3 at the scale of 1000 x.
    np.testing.assert_allclose(np_(layer(1000 * x)) / 1000, small, rtol=1e-4, atol=1e-4)
    features = np.random.default_rng(1).normal(size=(16, layer.router_kernel.shape[0]))
    logits = np_(layer.router_logits(1e4 * features.astype("float32")))
    assert np.abs(logits).max() <= 4.0 + 1e-4
    restored = type(layer).from_config(layer.get_config())
    assert restored.router_type == "cosine" and restored.router_temperature == 0.25


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"strides": 2, "padding": "same"},
        {"dilation_rate": 2},
        {"kernel_size": 4, "strides": 2, "padding": "same"},
        {"data_format": "channels_first", "padding": "same", "num_shared_experts": 1},
    ],
)
def test_conv_pixel_sparse_equals_dense_all_experts(kwargs):
    kwargs = {"kernel_size": 3, **kwargs}
    shape = (3, 2, 9, 7) if kwargs.get("data_format") == "channels_first" else (3, 9, 7, 2)
    x = np.random.default_rng(4).normal(size=shape).astype("float32")
    keras.utils.set_random_seed(0)
    dense = MoEConv2D(5, num_experts=6, top_k=2, routing="pixel", dispatch="dense", **kwargs)
    dense.build(x.shape)
    sparse = MoEConv2D(5, num_experts=6, top_k=2, routing="pixel", dispatch="sparse", **kwargs)
    sparse.build(x.shape)
    sparse.set_weights(dense.get_weights())
    expected = np_(dense(x))
    assert expected.shape == tuple(dense.compute_output_shape(x.shape))
    # Pixels of one image go to different experts: the mixture is per pixel.
    assert len(np.unique(np_(dense.expert_choices(x))[0])) >= 3
    np.testing.assert_allclose(np_(sparse(x)), expected, rtol=1e-4, atol=1e-4)


# Gradients, losses, training ----------------------------------------------

def router_gradient(layer, x):
    """Gradient of the task output alone (no aux loss) w.r.t. the router."""
    layer.build(x.shape)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = ops.sum(ops.square(layer(x)))
        return np_(tape.gradient(loss, layer.router_kernel.value))
    if backend == "jax":
        import jax

        def loss_fn(router):
            values = [router if v is layer.router_kernel else v.value for v in layer.trainable_variables]
            out, _ = layer.stateless_call(values, [v.value for v in layer.non_trainable_variables], x)
            return ops.sum(ops.square(out))

        return np_(jax.grad(loss_fn)(layer.router_kernel.value))
    if backend == "torch":
        ops.sum(ops.square(layer(x))).backward()
        return np_(layer.router_kernel.value.grad)
    pytest.skip(f"no gradient helper for {backend}")


@pytest.mark.parametrize("top_k", [1, 2])
def test_router_gets_gradient_from_task_loss(top_k):
    x = np.random.default_rng(6).normal(size=(16, 5)).astype("float32")
    layer = MoEDense(3, num_experts=4, top_k=top_k, switch_loss_weight=0.0)
    grad = router_gradient(layer, x)
    assert np.abs(grad).max() > 1e-6


def test_normalized_top_1_gives_router_no_task_gradient():
    """Why the k=1 default keeps the softmax weight (documented behaviour)."""
    x = np.random.default_rng(6).normal(size=(16, 5)).astype("float32")
    keras.utils.set_random_seed(0)
    normalized = MoEDense(3, num_experts=4, top_k=1, normalize_top_k=True, switch_loss_weight=0.0)
    keras.utils.set_random_seed(0)
    softmax_weighted = MoEDense(3, num_experts=4, top_k=1, switch_loss_weight=0.0)
    # Only the 1e-9 guard of the renormalisation leaves a trace of gradient.
    ratio = np.abs(router_gradient(normalized, x)).max() / np.abs(router_gradient(softmax_weighted, x)).max()
    assert ratio < 1e-3


def make_model(**moe_kwargs):
    inputs = keras.Input((8,))
    hidden = MoEDense(16, num_experts=4, activation="relu", name="moe", **moe_kwargs)(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(hidden)
    return keras.Model(inputs, outputs)


def toy_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5).astype("int32")
    return x, y


def test_fit_lowers_loss_and_losses_only_in_training():
    keras.utils.set_random_seed(0)
    x, y = toy_data()
    model = make_model(top_k=2, expert_hidden=8, z_loss_weight=1e-3)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]
    model(x[:4], training=True)
    assert len(model.losses) == 2  # Switch + z-loss
    model(x[:4], training=False)
    assert len(model.losses) == 0


def collapse_router(layer):
    """Set the router so that every input picks expert 0 with probability 0.98."""
    kernel = np.zeros(layer.router_kernel.shape, "float32")
    # A bias-like push through a constant feature: inputs get a column of 1s.
    kernel[-1, 0] = 5.0
    layer.router_kernel.assign(kernel)


@pytest.mark.parametrize(
    "balance",
    [
        {"switch_loss_weight": 0.5},
        {"switch_loss_weight": 0.0, "importance_loss_weight": 0.5},
        {"switch_loss_weight": 0.0, "diversity_loss_weight": 0.5},
        {"switch_loss_weight": 0.0, "bias_update_rate": 0.05},
    ],
    ids=["switch", "importance", "diversity", "loss_free_bias"],
)
def test_balancing_turns_a_collapsed_router_balanced(balance):
    """Each method really moves the router, on this backend, through fit."""
    keras.utils.set_random_seed(0)
    x, y = toy_data(512)
    x = np.concatenate([x, np.ones((len(x), 1), "float32")], axis=1)
    inputs = keras.Input((9,))
    moe = MoEDense(16, num_experts=4, name="moe", **balance)
    outputs = keras.layers.Dense(3, activation="softmax")(moe(inputs))
    model = keras.Model(inputs, outputs)
    collapse_router(moe)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    usage = ExpertUsage()
    history = model.fit(x, y, epochs=10, batch_size=64, verbose=0, callbacks=[usage])
    assert history.history["moe_max_load_ratio"][0] > 3.0  # starts collapsed
    assert history.history["moe_dead_experts"][0] >= 2
    assert history.history["moe_max_load_ratio"][-1] < 2.0  # ends balanced
    assert history.history["moe_dead_experts"][-1] == 0


def test_without_balancing_the_collapsed_router_stays_collapsed():
    keras.utils.set_random_seed(0)
    x, y = toy_data(512)
    x = np.concatenate([x, np.ones((len(x), 1), "float32")], axis=1)
    inputs = keras.Input((9,))
    moe = MoEDense(16, num_experts=4, name="moe", switch_loss_weight=0.0)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(moe(inputs)))
    collapse_router(moe)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=10, batch_size=64, verbose=0, callbacks=[ExpertUsage()])
    assert history.history["moe_max_load_ratio"][-1] > 2.5


def test_jit_compile_training_with_capacity_and_conv():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = MoEConv2D(4, 3, num_experts=3, top_k=2, padding="same", activation="relu")(inputs)
    h = MoEConv2D(4, 3, num_experts=3, routing="pixel", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = MoEDense(8, num_experts=4, top_k=2, capacity_factor=1.25, dispatch="sparse", router_noise="gaussian", seed=2)(h)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_save_and_load_keras_file_gives_identical_predictions(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 1))
    h = MoEConv2D(4, 3, num_experts=3, top_k=2, num_shared_experts=1, activation="relu")(inputs)
    h = MoEConv2D(4, 3, num_experts=2, routing="pixel", num_shared_experts=1)(h)
    h = keras.layers.Flatten()(h)
    h = MoEDense(8, num_experts=4, top_k=2, expert_hidden=6, num_shared_experts=1, bias_update_rate=0.01, router_noise="learned", seed=1)(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 10, 10, 1)).astype("float32")
    model.fit(x, np.zeros((8, 3)), epochs=1, verbose=0)
    path = os.path.join(tmp_path, "moe.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]


def test_sequential_and_subclassed_models():
    x = np.random.default_rng(0).normal(size=(4, 5, 6)).astype("float32")
    seq = keras.Sequential([keras.Input((5, 6)), MoEDense(3, num_experts=2)])
    assert seq(x).shape == (4, 5, 3)

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.moe = MoEDense(3, num_experts=2, top_k=2)

        def call(self, x, training=False):
            return self.moe(x, training=training)

    net = Net()
    net.compile(optimizer="sgd", loss="mse")
    net.fit(x, np.zeros((4, 5, 3)), verbose=0)
    net(x, training=True)
    assert len(net.losses) == 1


def test_mixed_precision_keeps_router_in_float32():
    layer = MoEDense(4, num_experts=3, dtype="mixed_float16")
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float16")
    y = layer(x, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert layer.router_kernel.dtype == "float32"
    result = layer.route(x, training=False)
    assert keras.backend.standardize_dtype(result.probabilities.dtype) == "float32"


def test_count_params_per_token():
    layer = MoEDense(4, num_experts=5, top_k=3, expert_hidden=8, num_shared_experts=1)
    layer.build((None, 6))
    per_expert = 6 * 8 + 8 + 8 * 4 + 4
    assert layer.count_params_per_token() == 6 * 5 + 3 * per_expert + per_expert
    assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == 6 * 5 + 6 * per_expert


# Dropless by default, masks, precision ------------------------------------


def test_defaults_are_sparse_and_dropless_in_training_and_inference():
    layer = MoEDense(4, num_experts=64, top_k=2, expert_hidden=8)
    assert layer.resolved_dispatch(training=True) == "dropless"
    assert layer.resolved_dispatch(training=False) == "dropless"
    capped = MoEDense(4, num_experts=64, top_k=2, capacity_factor=1.25)
    assert capped.resolved_dispatch(training=True) == "capacity"
    assert capped.resolved_dispatch(training=False) == "dropless"


def test_inference_runs_the_rung_that_holds_the_busiest_expert(monkeypatch):
    from moe_keras.dispatch import dropless

    taken = []
    switch = ops.switch

    def recording(index, branches, *operands):
        taken.append(int(np_(index)))
        return switch(index, branches, *operands)

    monkeypatch.setattr(dropless.ops, "switch", recording)
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(4, 128, 16)).astype("float32")
    layer = MoEDense(16, num_experts=16, top_k=2, expert_hidden=8)
    dense = MoEDense(16, num_experts=16, top_k=2, expert_hidden=8, dispatch="dense")
    layer.build(x.shape)
    dense.build(x.shape)
    dense.set_weights(layer.get_weights())
    np.testing.assert_allclose(np_(layer(x)), np_(dense(x)), rtol=1e-4, atol=1e-4)
    if loops_over_groups():
        # TensorFlow runs every expert on exactly its own rows: no rungs.
        assert taken == []
        return
    # The busiest expert's load, from NumPy's own top-2 of the router.
    logits = x.reshape(-1, 16) @ np_(layer.router_kernel)
    top2 = np.argsort(-logits, axis=1)[:, :2]
    busiest = np.bincount(top2.ravel(), minlength=16).max()
    ladder = dropless.bucket_capacities(4 * 128, 16, 2)
    assert ladder == [72, 80, 96, 128, 256, 512]
    (index,) = taken
    assert ladder[index] >= busiest and (index == 0 or ladder[index - 1] < busiest)
    # Far below the (n, T, d) buffers of a capacity of all T tokens.
    assert ladder[index] <= 128, (busiest, ladder)


def padded_batch(seed, extra):
    """A (2, 5, 6) batch whose second row has two padded steps, and the same
    batch with `extra` more padded steps of garbage appended."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 5, 6)).astype("float32")
    mask = np.ones((2, 5), bool)
    mask[1, 3:] = False
    longer = np.concatenate([x, rng.normal(size=(2, extra, 6)).astype("float32") * 9], axis=1)
    longer_mask = np.concatenate([mask, np.zeros((2, extra), bool)], axis=1)
    return (x, mask), (longer, longer_mask)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_experts": 8, "top_k": 2, "expert_hidden": 4},  # dropless
        {"num_experts": 4, "top_k": 2},  # dense
        {"num_experts": 8, "top_k": 1, "capacity_factor": 1.0},  # capacity
        {"num_experts": 4, "top_k": 2, "capacity_factor": 1.0, "dispatch": "dense"},
        {"num_experts": 4, "top_k": 1, "selection": "expert_choice"},
    ],
)
def test_padding_changes_no_output_loss_or_count(kwargs):
    (x, mask), (longer, longer_mask) = padded_batch(0, extra=4)
    layer = MoEDense(
        3, importance_loss_weight=0.1, diversity_loss_weight=0.1,
        overflow_loss_weight=0.1, z_loss_weight=0.1, **kwargs,
    )
    layer.build(longer.shape)
    results = []
    for inputs, m in ((x, mask), (longer, longer_mask)):
        layer.reset_routing_stats()
        y = np_(layer(inputs, training=True, mask=m))
        results.append((y, [float(np_(v)) for v in layer.losses], np_(layer.expert_counts), float(np_(layer.dropped_slots))))
    (y, losses, counts, dropped), (y2, losses2, counts2, dropped2) = results
    np.testing.assert_allclose(y2[:, :5][mask], y[mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(losses2, losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(counts2, counts)
    assert dropped2 == dropped
    # Only the 8 real tokens were counted.
    assert counts.sum() == 8 * layer.top_k


def test_mask_reaches_the_layer_from_an_embedding():
    keras.utils.set_random_seed(0)
    ids = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0]])
    inputs = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(10, 6, mask_zero=True)(inputs)
    moe = MoEDense(3, num_experts=8, top_k=2, name="moe")
    model = keras.Model(inputs, moe(h))
    moe.reset_routing_stats()
    model(ids, training=True)
    assert float(np_(ops.sum(moe.expert_counts))) == 8 * 2  # 8 real tokens, k=2


@pytest.mark.parametrize("rows_bound", [1e9, 1e-3], ids=["buffers", "sorted_rows"])
def test_mixed_precision_output_matches_float32(monkeypatch, rows_bound):
    from moe_keras.dispatch import strategy

    # Both dropless engines: every call on buffers, or every call on the
    # sorted rows and their grouped matmul.
    monkeypatch.setattr(strategy, "ROWS_MIN_IMBALANCE", rows_bound)
    x = np.random.default_rng(1).normal(size=(4, 16, 8)).astype("float32")
    reference = MoEDense(8, num_experts=8, top_k=2, expert_hidden=16)
    reference.build(x.shape)
    expected = np_(reference(x))
    try:
        keras.config.set_dtype_policy("mixed_float16")
        half = MoEDense(8, num_experts=8, top_k=2, expert_hidden=16)
        half.build(x.shape)
        half.set_weights(reference.get_weights())
        got = np_(half(x)).astype("float32")
        assert half.compute_dtype == "float16"
        # Routing stays float32, so the same experts are chosen.
        np.testing.assert_array_equal(np_(half.expert_choices(x)), np_(reference.expert_choices(x)))
    finally:
        keras.config.set_dtype_policy("float32")
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=5e-3 * scale)


@pytest.mark.parametrize("kwargs", [{}, {"capacity_factor": 1.25}, {"dispatch": "dense"}])
def test_compiled_predictions_equal_eager(kwargs):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 6))
    h = MoEDense(8, num_experts=8, top_k=2, expert_hidden=5, **kwargs)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    model.compile(loss="mse", jit_compile=True)
    x = np.random.default_rng(0).normal(size=(6, 10, 6)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), np_(model(x)), rtol=1e-5, atol=1e-5)


# Routers: sigmoid scores, expert choice, batch priority --------------------


def softmax_np(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_expert_choice_layer_equals_numpy():
    x = np.random.default_rng(5).normal(size=(12, 4)).astype("float32")
    layer = MoEDense(3, num_experts=3, top_k=1, selection="expert_choice")
    y = np_(layer(x))
    probs = softmax_np(x @ np_(layer.router_kernel))
    w, b = np_(layer.experts["kernel"]), np_(layer.experts["bias"])
    capacity = 4  # ceil(1.0 * 12 * 1 / 3)
    expected = np.zeros((12, 3))
    for e in range(3):
        for t in np.argsort(-probs[:, e], kind="stable")[:capacity]:
            expected[t] += probs[t, e] * (x[t] @ w[e] + b[e])
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_expert_choice_is_refused_with_a_causal_mask():
    layer = MoEDense(3, num_experts=2, selection="expert_choice")
    with pytest.raises(ValueError, match="cannot be causal"):
        layer(np.zeros((2, 5, 4), "float32"), use_causal_mask=True)
    # Token choice is causal: each position routes on its own.
    MoEDense(3, num_experts=2)(np.zeros((2, 5, 4), "float32"), use_causal_mask=True)


def test_sigmoid_layer_mixes_normalised_sigmoid_scores():
    x = np.random.default_rng(6).normal(size=(7, 4)).astype("float32")
    layer = MoEDense(2, num_experts=4, top_k=2, router_activation="sigmoid")
    y = np_(layer(x))
    scores = 1 / (1 + np.exp(-(x @ np_(layer.router_kernel))))
    w, b = np_(layer.experts["kernel"]), np_(layer.experts["bias"])
    expected = np.zeros((7, 2))
    for t in range(7):
        top = np.argsort(-scores[t])[:2]
        weights = scores[t, top] / scores[t, top].sum()
        expected[t] = sum(weights[j] * (x[t] @ w[top[j]] + b[top[j]]) for j in range(2))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"router_activation": "sigmoid", "top_k": 2},
        {"selection": "expert_choice", "top_k": 1},
    ],
)
def test_new_routers_train_the_router_on_every_backend(kwargs):
    from conftest import gradients

    x = np.random.default_rng(7).normal(size=(16, 4)).astype("float32")
    layer = MoEDense(3, num_experts=4, switch_loss_weight=0.0, **kwargs)
    layer.build(x.shape)
    (grad,) = gradients(
        lambda r: ops.sum(ops.square(_stateless(layer, r, x))),
        np_(layer.router_kernel),
    )
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0


def _stateless(layer, router_kernel, x):
    """The layer's output with the router kernel as an argument."""
    trainable = [router_kernel if v is layer.router_kernel else v for v in layer.trainable_variables]
    trainable = [ops.convert_to_tensor(v) for v in trainable]
    non_trainable = [ops.convert_to_tensor(v) for v in layer.non_trainable_variables]
    outputs, _ = layer.stateless_call(trainable, non_trainable, x)
    return outputs


def test_batch_prioritised_capacity_in_the_layer():
    # Six tokens prefer expert 0, capacity 2: by score the two with the
    # highest top probability keep their expert, by position tokens 0 and 1.
    rng = np.random.default_rng(8)
    x = np.abs(rng.normal(size=(6, 3))).astype("float32")
    results = {}
    for priority in ("score", "position"):
        layer = MoEDense(2, num_experts=3, capacity_factor=1.0, capacity_priority=priority,
                         dispatch="sparse", switch_loss_weight=0.0)
        layer.build(x.shape)
        router = np.zeros((3, 3), "float32")
        router[:, 0] = 2.0
        layer.router_kernel.assign(router)
        y = np_(layer(x, training=True))
        results[priority] = np.abs(y).sum(axis=1) > 0
    top_probability = softmax_np(x @ router).max(axis=1)
    np.testing.assert_array_equal(np.flatnonzero(results["position"]), [0, 1])
    np.testing.assert_array_equal(np.flatnonzero(results["score"]), np.sort(np.argsort(-top_probability)[:2]))


@pytest.mark.parametrize("kwargs", [{"num_experts": 4}, {"num_experts": 8, "expert_hidden": 4}])
def test_empty_sequence_keeps_the_batch_axis(kwargs):
    layer = MoEDense(3, **kwargs)
    for training in (False, True):
        y = layer(np.zeros((2, 0, 6), "float32"), training=training)
        assert tuple(y.shape) == (2, 0, 3)


@pytest.mark.parametrize("routing", ["sample", "pixel"])
def test_conv_image_smaller_than_the_kernel_raises_a_clear_error(routing):
    with pytest.raises(ValueError, match="zero or negative"):
        MoEConv2D(2, 5, num_experts=4, routing=routing)(keras.Input((3, 3, 2)))
    with pytest.raises(ValueError, match="zero or negative"):
        MoEConv2D(2, 5, num_experts=4, routing=routing)(np.zeros((1, 3, 3, 2), "float32"))
    with pytest.raises(ValueError, match="zero or negative"):
        MoEConv2D(2, 3, num_experts=4, dilation_rate=2, data_format="channels_first")(
            np.zeros((1, 2, 4, 8), "float32")
        )


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: MoEDense(3, num_experts=4, top_k=2), (2, 6)),
        (lambda: MoEDense(3, num_experts=4, expert_hidden=5), (2, 4, 6)),
        (lambda: MoEConv2D(2, 3, num_experts=4), (1, 5, 5, 2)),
        (lambda: MoEConv2D(2, 3, num_experts=4, routing="pixel"), (1, 5, 5, 2)),
    ],
)
def test_integer_inputs_give_the_float_inputs_output(make, shape):
    # PyTorch refused integer inputs (raw pixels, token ids as features).
    values = np.random.default_rng(0).integers(0, 4, size=shape)
    layer = make()
    expected = keras.ops.convert_to_numpy(layer(values.astype("float32")))
    outputs = layer(values.astype("int32"))
    assert keras.backend.standardize_dtype(outputs.dtype) == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="jax.export is JAX's")
@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_experts": 8},  # dropless, computed densely
        {"num_experts": 4, "top_k": 2, "eval_capacity_factor": 0.75, "dispatch": "sparse"},
    ],
)
def test_jax_export_with_a_polymorphic_batch_computes_the_layers_mixture(kwargs):
    import jax
    from jax import export

    layer = MoEDense(3, **kwargs)
    x = np.random.default_rng(0).normal(size=(10, 6)).astype("float32")
    layer(x)
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]
    (batch,) = export.symbolic_shape("b")
    exported = export.export(jax.jit(lambda x: layer.stateless_call(trainable, non_trainable, x)[0]))(
        jax.ShapeDtypeStruct((batch, 6), np.float32)
    )
    for rows in (10, 7):
        # A capacity of 0.75 drops choices: the exported call must drop the
        # same ones as the layer, which sizes its buffers from the static count.
        np.testing.assert_allclose(exported.call(x[:rows]), layer(x[:rows]), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="jax.export is JAX's")
def test_jax_export_of_expert_choice_with_a_polymorphic_batch_says_why_not():
    import jax
    from jax import export

    layer = MoEDense(3, num_experts=4, selection="expert_choice")
    layer(np.ones((4, 6), "float32"))
    weights = ([v.value for v in layer.trainable_variables], [v.value for v in layer.non_trainable_variables])
    (batch,) = export.symbolic_shape("b")
    with pytest.raises(ValueError, match="static"):
        export.export(jax.jit(lambda x: layer.stateless_call(*weights, x)[0]))(
            jax.ShapeDtypeStruct((batch, 6), np.float32)
        )


@pytest.mark.parametrize("trainable", [True, False])
def test_frozen_layer_keeps_its_loss_free_bias(trainable):
    """`trainable=False` freezes the routing, as BatchNormalization freezes
    its moving statistics: the loss-free bias stops moving in `fit`, while
    the routing counters still count."""
    keras.utils.set_random_seed(0)
    x, y = toy_data(256)
    x = np.concatenate([x, np.ones((len(x), 1), "float32")], axis=1)
    moe = MoEDense(8, num_experts=4, bias_update_rate=0.05, name="moe")
    model = keras.Sequential([keras.Input((9,)), moe, keras.layers.Dense(3, activation="softmax")])
    collapse_router(moe)  # every token on expert 0: a trainable bias must move
    moe.trainable = trainable
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    bias = ops.convert_to_numpy(moe.selection_bias)
    assert np.any(bias != 0) == trainable
    assert moe.routing_stats()["tokens"] == len(x)
