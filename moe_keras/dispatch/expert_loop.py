"""Experts one at a time: each expert's whole MLP on its own rows.

Two layouts of the routed rows run this way where it measured faster
than the alternative:

* Stacked `(n, C, d)` buffers (`map_experts`), at inference on JAX's CPU.
  The buffer engines run all n experts as one batched einsum over the
  buffers. On JAX's CPU backend that batched product slows sharply once
  the experts are many and their buffers past a size, while a loop over
  the experts does not: a `MoEDense(256, expert_hidden=384)` predict of
  4,096 tokens took 0.57 of the batched time through the loop at n=256,
  k=2, and 0.86-0.88 at k=2 for n=8 and 64; it lost about a tenth at k=1
  for n=8 and 256 (`benchmarks/results/expert_loop_cpu_jax.json`, the
  table in `benchmarks/README.md`). Inference only: in a train step the
  loop took 0.94-1.20 of the einsum's time, below 0.95 only at one rung of
  n=256, k=2 (`benchmarks/results/expert_loop_train_cpu_jax*.json`).
* Rows sorted by expert (`map_groups`), on TensorFlow, in training and at
  inference. TensorFlow's graphs run dynamic shapes natively, so each
  expert gets exactly its own run of rows (`tf.split` by the group sizes):
  no padding to the busiest expert, and one plain matmul per layer and
  expert. At n=64, k=2 and 4,096 tokens the experts' MLPs took 1.11 of one
  plain matmul of the same FLOPs at inference and 1.15 with their
  gradients (`benchmarks/results/profile_dropless_cpu_tf.json`), and a
  whole `MoEDense` train step went from 2.06 to 1.49 times the
  equal-active Dense FFN's against buffers padded to the busiest expert
  (`peers_cpu_tf.json` against `peers_cpu_tf_buffers.json`). The graph
  holds every expert's ops, so tracing it (the first call of `fit` or
  `predict`) takes longer the more experts there are, where the buffers'
  graph was the same size for any n.
"""

import keras
from keras import ops

LOOP_PLATFORMS = ("cpu",)
"""JAX platforms whose inference runs the stacked experts one at a time."""

GROUP_LOOP_BACKENDS = ("tensorflow",)
"""Backends whose sorted rows run through `map_groups`."""


def loops_over_experts(training):
    """Whether the stacked experts of this call run one at a time."""
    if training or keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() in LOOP_PLATFORMS


def loops_over_groups():
    """Whether the experts on sorted rows run one at a time (`map_groups`)."""
    return keras.backend.backend() in GROUP_LOOP_BACKENDS


def map_experts(expert, buffers, weights):
    """`expert(rows, weights_of_one_expert)` over every expert, in a loop.

    Args:
        expert: `(rows (C, d), {name: one expert's weight}) -> (C, u)`.
        buffers: `(n, C, d)`.
        weights: `{name: (n, ...)}` stacked expert weights.

    Returns:
        `(n, C, u)`.
    """
    import jax

    # JAX primitives take arrays, not Keras variables.
    weights = {name: ops.convert_to_tensor(value) for name, value in weights.items()}
    return jax.lax.map(lambda args: expert(*args), (ops.convert_to_tensor(buffers), weights))


def map_groups(expert, rows, group_sizes, weights, *per_row):
    """`expert(its rows, its weights, *its per_row)` over every expert's
    run of rows sorted by expert (TensorFlow).

    Args:
        expert: `(rows (r, d), {name: one expert's weight}, *(r, ...)) ->
            (r, u)`.
        rows: `(R, d)` sorted by expert; rows past `sum(group_sizes)` give
            zeros.
        group_sizes: `(n,)` int32 rows per expert, in order.
        weights: `{name: (n, ...)}` stacked expert weights.
        *per_row: `(R, ...)` tensors laid out like `rows` (a dropout mask),
            split the same way.

    Returns:
        `(R, u)`.
    """
    import tensorflow as tf

    num_experts = group_sizes.shape[0]
    group_sizes = ops.convert_to_tensor(group_sizes, "int32")
    # The rows past the groups (masked tokens' choices) form one more
    # group, which gets zeros.
    unused = ops.shape(rows)[0] - ops.sum(group_sizes)
    sizes = ops.concatenate([group_sizes, ops.reshape(unused, (1,))], axis=0)
    row_groups = tf.split(rows, sizes, num=num_experts + 1)
    extra_groups = [tf.split(values, sizes, num=num_experts + 1) for values in per_row]
    # Unstacked, not indexed: the gradient of `kernel[e]` is a zero tensor
    # of the whole stack per expert (n times the weights' size), that of
    # `unstack` one stack of the n slices.
    expert_weights = {name: tf.unstack(ops.convert_to_tensor(value)) for name, value in weights.items()}
    outputs = [
        expert(row_groups[e], {name: value[e] for name, value in expert_weights.items()},
               *(groups[e] for groups in extra_groups))
        for e in range(num_experts)
    ]
    outputs.append(ops.zeros((unused, outputs[0].shape[-1]), outputs[0].dtype))
    return ops.concatenate(outputs, axis=0)
