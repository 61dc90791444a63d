"""Running MoE models on several devices: expert parallelism and data parallelism.

MoE layers keep their routed experts stacked along a leading expert axis
(`expert_kernel` `(n, d_in, units)`, `expert_bias` `(n, units)`,
`expert_hidden_kernel` `(n, d, h)`, MoEConv2D's `expert_kernel`
`(n, kh, kw, cin, f)`, ...). Expert parallelism splits that axis over
devices, so each device stores (and, with the optimizer slots, updates)
`n / devices` experts; everything else (router, shared experts, ordinary
layers, routing counters) is replicated.

JAX (`KERAS_BACKEND=jax`) -- expert parallelism through the Keras
distribution API (`keras.distribution.ModelParallel` only works on JAX)::

    import keras
    from moe_keras import distribution as moe_distribution

    # 8 GPUs -> a (batch=2, model=4) mesh: experts split 4 ways, batch 2 ways.
    keras.distribution.set_distribution(
        moe_distribution.expert_parallel(num_experts=8, expert_parallel_size=4)
    )
    model = build_model()          # variables are created sharded
    model.compile(...)
    model.fit(x, y, batch_size=64)  # batch size divisible by the batch axis

XLA (GSPMD) inserts the collectives: the token-expert einsums run where
the expert shards live and the results are all-gathered / reduced. The
layers need no change; the variables must just be created after
`set_distribution` (or inside `distribution.scope()`).

To try it without GPUs, fake host devices before JAX is imported::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 KERAS_BACKEND=jax \
        python train.py

TensorFlow (`KERAS_BACKEND=tensorflow`) -- data parallelism with
`tf.distribute.MirroredStrategy` (one replica per GPU, weights replicated,
gradients all-reduced)::

    strategy = moe_distribution.mirrored_strategy()
    with strategy.scope():
        model = build_model()
        model.compile(...)
    model.fit(dataset)  # global batch, split across the replicas

The routing counters (`expert_counts`, `dropped_slots`) and the loss-free
balancing bias are created with `aggregation="mean"`, so the replicas'
updates combine into one value: the counters then hold counts per replica
(the expert shares, entropy and load ratios are exact), and the bias is the
mean of the replicas' updated biases.
"""

import math
import numbers

import keras

EXPERT_WEIGHT_PATTERN = r"(.*/)?expert_([a-z0-9_]*_)?(kernel|bias)"
"""Regex (full match) of the routed-expert weights' variable paths.

Matches `expert_kernel`, `expert_bias`, `expert_hidden_kernel`,
`expert_hidden_bias` of any layer, but not `shared_*`, `router_kernel` or the
`expert_counts` statistic. Optimizer slots inherit the layout of their
variable, so they are sharded the same way.
"""


def layout_map(device_mesh, expert_axis="model", batch_axis="batch"):
    """Layout map sharding every routed-expert weight on its expert axis.

    Args:
        device_mesh: `keras.distribution.DeviceMesh` with an axis named
            `expert_axis`.
        expert_axis: mesh axis the leading (expert) axis of the expert
            weights is split over.
        batch_axis: mesh axis of the data; only checked to exist (and to
            differ from `expert_axis`), the data layout is the
            distribution's.

    Returns:
        A `keras.distribution.LayoutMap`. Its one layout, `(expert_axis,)`,
        names only the leading axis: the remaining axes of a weight of any
        rank (3D dense kernels, 5D conv kernels, 2D biases) are replicated.
        Variables it does not match are fully replicated.

    Raises:
        ValueError: if an axis is missing from the mesh.
    """
    names = tuple(device_mesh.axis_names)
    for axis, arg in ((expert_axis, "expert_axis"), (batch_axis, "batch_axis")):
        if axis not in names:
            raise ValueError(
                f"`{arg}`={axis!r} is not an axis of the device mesh, whose "
                f"axes are {names}."
            )
    if expert_axis == batch_axis:
        raise ValueError(
            "`expert_axis` and `batch_axis` must be different mesh axes. "
            f"Received: {expert_axis!r} for both."
        )
    layouts = keras.distribution.LayoutMap(device_mesh)
    layouts[EXPERT_WEIGHT_PATTERN] = keras.distribution.TensorLayout(
        (expert_axis,), device_mesh
    )
    return layouts


def _is_positive_int(value):
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and value >= 1
    )


def _mesh_shape(num_devices, num_experts, expert_parallel_size):
    if num_experts is not None and not _is_positive_int(num_experts):
        raise ValueError(
            "`num_experts` must be a positive integer (the models' experts "
            f"per MoE layer) or None. Received: num_experts={num_experts!r}"
        )
    if expert_parallel_size is None:
        expert_parallel_size = (
            num_devices if num_experts is None else math.gcd(num_devices, num_experts)
        )
    if (
        not _is_positive_int(expert_parallel_size)
        or num_devices % expert_parallel_size
    ):
        raise ValueError(
            "`expert_parallel_size` must be a positive divisor of the number "
            f"of devices ({num_devices}). "
            f"Received: expert_parallel_size={expert_parallel_size!r}"
        )
    expert_parallel_size = int(expert_parallel_size)
    return num_devices // expert_parallel_size, expert_parallel_size


def expert_parallel(
    device_mesh=None,
    num_experts=None,
    expert_parallel_size=None,
    expert_axis="model",
    batch_axis="batch",
    devices=None,
):
    """Expert-parallel (and data-parallel) distribution, JAX backend only.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with axes
            `batch_axis` and `expert_axis`; `None` builds a 2D
            `(batch, model)` mesh of `devices`.
        num_experts: the models' `num_experts`, used to check (and, when
            `expert_parallel_size` is `None`, choose) the split. Every MoE
            layer of the model must have a multiple of the expert-axis size:
            uneven sharding is not supported (JAX rejects a variable whose
            sharded axis does not divide), so it raises here instead of at
            model construction. Models mixing several expert counts should
            pass their gcd.
        expert_parallel_size: devices along the expert axis when the mesh is
            built here; the rest go to the batch axis. Defaults to
            `gcd(num_devices, num_experts)` (all devices when `num_experts`
            is `None`).
        expert_axis: mesh axis name for the experts.
        batch_axis: mesh axis name for the data.
        devices: devices for the built mesh; defaults to
            `keras.distribution.list_devices()`.

    Returns:
        A `keras.distribution.ModelParallel`: use it with
        `keras.distribution.set_distribution(...)` or `with dist.scope():`
        before building the model. Global batch sizes must be divisible by
        the batch-axis size.

    Raises:
        ValueError: if `num_experts` is not divisible by the expert-axis
            size, or the mesh cannot be built.
    """
    if device_mesh is None:
        if devices is None:
            devices = keras.distribution.list_devices()
        shape = _mesh_shape(len(devices), num_experts, expert_parallel_size)
        device_mesh = keras.distribution.DeviceMesh(
            shape=shape, axis_names=(batch_axis, expert_axis), devices=devices
        )
    layouts = layout_map(device_mesh, expert_axis, batch_axis)
    axis_size = device_mesh.shape[list(device_mesh.axis_names).index(expert_axis)]
    if num_experts is not None and num_experts % axis_size:
        raise ValueError(
            f"`num_experts`={num_experts} is not divisible by the size "
            f"{axis_size} of the expert mesh axis {expert_axis!r}; every "
            "device must hold the same number of experts. Use a mesh whose "
            f"{expert_axis!r} axis divides num_experts."
        )
    return keras.distribution.ModelParallel(
        layout_map=layouts, batch_dim_name=batch_axis
    )


def data_parallel(devices=None):
    """Plain data parallelism (replicated weights), JAX backend only.

    Args:
        devices: devices to use; defaults to all of them.

    Returns:
        A `keras.distribution.DataParallel`.
    """
    return keras.distribution.DataParallel(devices=devices)


def mirrored_strategy(devices=None):
    """`tf.distribute.MirroredStrategy` for the TensorFlow backend.

    Build and compile the model inside its scope; `fit` then splits each
    global batch across the replicas and all-reduces the gradients::

        strategy = mirrored_strategy()
        with strategy.scope():
            model = keras.Sequential([..., MoEDense(16, num_experts=8), ...])
            model.compile(optimizer="adam", loss="mse")
        model.fit(x, y, batch_size=64)

    Args:
        devices: device names (e.g. `["/gpu:0", "/gpu:1"]`); `None` uses
            all GPUs (or the CPU when there is none).

    Returns:
        A `tf.distribute.MirroredStrategy`.
    """
    import tensorflow as tf  # Lazy: only the TensorFlow backend needs it.

    return tf.distribute.MirroredStrategy(devices=devices)
