"""Multi-device training of MoE models: JAX expert parallelism, TF mirroring.

Every test runs its body in a fresh interpreter: the fake host devices
(`XLA_FLAGS`, TF logical devices) and the backend must be chosen before JAX,
TensorFlow or Keras is imported, which this pytest process already did.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# Shared by both backends: the same small model (a sample-routed MoEConv2D and
# an MLP-expert MoEDense with a shared expert), the same data, and a
# reference run on a single device with the identical initial weights.
COMMON = """
import json
import numpy as np

def build_model(keras, conv_experts=8, dense_experts=8, **moe_kwargs):
    from moe_keras import MoEConv2D, MoEDense
    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 3))
    h = MoEConv2D(8, 3, num_experts=conv_experts, top_k=2, padding="same",
                  name="moe_conv", **moe_kwargs)(images)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = MoEDense(16, num_experts=dense_experts, top_k=2, expert_hidden=32,
                 num_shared_experts=1, name="moe_dense", **moe_kwargs)(h)
    outputs = keras.layers.Dense(1)(h)
    return keras.Model(images, outputs)

def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3))[:, None] * 4.0).astype("float32")
    return x, y

def train(keras, model, x, y, epochs=3, **compile_kwargs):
    # Returns the losses and the trained weights, compared rather than
    # predictions: one compiled function fewer per run.
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse",
                  **compile_kwargs)
    history = model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False,
                        verbose=0)
    # Trainable only: the routing counters are checked on their own.
    weights = [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]
    return history.history["loss"], weights

def max_diff(a, b):
    return float(max(np.max(np.abs(u - v)) for u, v in zip(a, b)))
"""

JAX_EXPERT_PARALLEL = """
import keras
from moe_keras import distribution as moe_distribution

x, y = data()
reference = build_model(keras)
initial = reference.get_weights()
ref_loss, ref_weights = train(keras, reference, x, y)

dist = moe_distribution.expert_parallel(num_experts=8, expert_parallel_size=4)
with dist.scope():
    model = build_model(keras)
    model.set_weights(initial)
    loss, weights = train(keras, model, x, y)

shards = {}
for v in list(model.weights) + list(model.optimizer.variables):
    if v.path.split("/")[-1].startswith(("expert_", "shared_", "router_")) or (
        "moe_" in v.path and ("momentum" in v.path or "velocity" in v.path)
    ):
        shards[v.path] = {
            "shape": list(v.shape),
            "spec": [None if a is None else str(a) for a in v.value.sharding.spec],
            "shard_shapes": sorted({tuple(s.data.shape)
                                    for s in v.value.addressable_shards}),
            "devices": len(v.value.sharding.device_set),
        }

try:
    moe_distribution.expert_parallel(num_experts=6, expert_parallel_size=4)
    uneven = None
except ValueError as error:
    uneven = str(error)

counts = {name: [keras.ops.convert_to_numpy(m.get_layer(name).expert_counts)
                 .tolist() for m in (reference, model)]
          for name in ("moe_conv", "moe_dense")}
print("RESULT" + json.dumps({
    "mesh": list(dist.device_mesh.shape), "counts": counts,
    "dense_dispatch": [model.get_layer("moe_dense").resolved_dispatch(t) for t in (True, False)],
    "ref_loss": ref_loss, "loss": loss,
    "weight_diff": max_diff(ref_weights, weights),
    "shards": shards, "uneven": uneven,
}))
"""

TF_MIRRORED = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from moe_keras import distribution as moe_distribution

x, y = data()
# The Switch loss is computed per replica on its half batch (it is not
# linear in the batch), so only a run without it matches exactly.
kwargs = dict(switch_loss_weight=0.0)
reference = build_model(keras, **kwargs)
initial = reference.get_weights()
# XLA cannot compile a step whose mirrored variables live on two logical
# CPU devices, so both runs use the plain graph.
ref_loss, ref_weights = train(keras, reference, x, y, jit_compile=False)

strategy = moe_distribution.mirrored_strategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = build_model(keras, **kwargs)
    model.set_weights(initial)
    loss, weights = train(keras, model, x, y, jit_compile=False)

# A second `fit` call: the routing counters must keep adding up.
for m in (reference, model):
    m.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)

counts = {name: [reference.get_layer(name).expert_counts.numpy().tolist(),
                 model.get_layer(name).expert_counts.numpy().tolist()]
          for name in ("moe_conv", "moe_dense")}
print("RESULT" + json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "ref_loss": ref_loss, "loss": loss,
    "weight_diff": max_diff(ref_weights, weights),
    "counts": counts,
}))
"""


def start_isolated(body, env):
    """Starts `COMMON + body` in a new interpreter with `env` added."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(COMMON) + textwrap.dedent(body)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect(process):
    """Waits for a `start_isolated` process; returns its RESULT json."""
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT")]
    assert process.returncode == 0 and lines, stderr[-4000:]
    return json.loads(lines[-1][len("RESULT"):])


@pytest.fixture(scope="module")
def jax_result():
    return collect(
        start_isolated(
            JAX_EXPERT_PARALLEL,
            {
                "KERAS_BACKEND": "jax",
                "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
            },
        )
    )


@pytest.fixture(scope="module")
def tf_result():
    return collect(start_isolated(TF_MIRRORED, {"KERAS_BACKEND": "tensorflow"}))


def test_jax_expert_parallel_trains(jax_result):
    loss = jax_result["loss"]
    assert jax_result["mesh"] == [2, 4]
    assert all(value == value and abs(value) < 1e6 for value in loss)
    assert loss[-1] < loss[0]


def test_jax_expert_weights_are_split_over_model_axis(jax_result):
    shards = jax_result["shards"]
    routed = {p: s for p, s in shards.items()
              if p.split("/")[-1].startswith("expert_")
              and p.endswith(("kernel", "bias"))}
    # Dense: hidden kernel/bias, kernel, bias; conv: kernel, bias.
    assert len(routed) == 6, sorted(shards)
    for path, info in routed.items():
        n = info["shape"][0]
        assert n == 8, path
        assert info["spec"][:1] == ["model"], (path, info)
        # Each device holds n / 4 experts and all their other axes.
        assert info["shard_shapes"] == [[n // 4] + info["shape"][1:]], (path, info)
        assert info["devices"] == 8
    # Optimizer slots follow their variable's layout.
    slots = [s for p, s in shards.items()
             if "expert_kernel" in p and ("momentum" in p or "velocity" in p)]
    assert slots and all(s["shard_shapes"][0][0] == 2 for s in slots)
    # Shared experts, router and statistics stay replicated.
    for path, info in shards.items():
        name = path.split("/")[-1]
        if name.startswith(("shared_", "router_")) or name == "expert_counts":
            assert info["shard_shapes"] == [info["shape"]], (path, info)


def test_jax_expert_parallel_runs_the_dropless_path(jax_result):
    # The MoEDense of the shared model (n=8, k=2, defaults) is dropless in
    # training and at inference, so the match below covers that path.
    assert jax_result["dense_dispatch"] == ["dropless", "dropless"]


def test_jax_expert_parallel_matches_single_device(jax_result):
    for ours, ref in zip(jax_result["loss"], jax_result["ref_loss"]):
        assert abs(ours - ref) <= 1e-4 * max(1.0, abs(ref))
    assert jax_result["weight_diff"] < 1e-4
    # GSPMD keeps global-batch semantics: the Switch loss (on by default
    # here) and the routing counters are those of the single-device run.
    for name, (ref, ours) in jax_result["counts"].items():
        assert ours == ref, name


def test_jax_expert_parallel_rejects_uneven_split(jax_result):
    assert jax_result["uneven"] is not None
    assert "not divisible" in jax_result["uneven"]


def test_tf_mirrored_trains_and_matches_single_device(tf_result):
    assert tf_result["replicas"] == 2
    loss = tf_result["loss"]
    assert loss[-1] < loss[0]
    for ours, ref in zip(loss, tf_result["ref_loss"]):
        assert abs(ours - ref) <= 1e-4 * max(1.0, abs(ref)), tf_result
    assert tf_result["weight_diff"] < 1e-4, tf_result


def test_tf_mirrored_routing_counts_add_up_over_replicas(tf_result):
    """Counters hold the mean over the 2 replicas: the same expert shares as
    one device, counts per replica (half the single-device totals)."""
    for name, (ref, ours) in tf_result["counts"].items():
        np.testing.assert_allclose(np.asarray(ours) * 2, ref, rtol=1e-6, err_msg=name)


def test_mesh_shape_takes_numpy_sizes_and_checks_num_experts():
    """Pure arithmetic, no devices: a NumPy integer is a size like any other,
    and a nonsensical expert count is refused instead of giving a mesh."""
    from moe_keras.distribution import _mesh_shape

    assert _mesh_shape(8, 8, np.int64(4)) == (2, 4)
    assert _mesh_shape(8, np.int64(6), None) == (4, 2)
    for bad in (0, -4, 2.0, True):
        with pytest.raises(ValueError, match="`num_experts` must be a positive integer"):
            _mesh_shape(8, bad, None)
    with pytest.raises(ValueError, match="positive divisor"):
        _mesh_shape(8, 8, 3)
