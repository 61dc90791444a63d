"""Stacked experts on their `(n, C, d)` buffers, one expert at a time.

The buffer engines run all n experts as one batched einsum over the
buffers. On JAX's CPU backend that batched product slows sharply once the
experts are many and their buffers past a size, while a loop over the
experts, each running its whole MLP on its own `(C, d)` rows, does not: a
`MoEDense(256, expert_hidden=384)` predict of 4,096 tokens took 0.57 of the
batched time through the loop at n=256, k=2, and 0.86-0.88 at k=2 for n=8
and 64; it lost about a tenth at k=1 for n=8 and 256
(`benchmarks/results/expert_loop_cpu_jax.json`, the table in
`benchmarks/README.md`). Inference only: in a train step the loop took
0.94-1.20 of the einsum's time, below 0.95 only at one rung of n=256, k=2
(`benchmarks/results/expert_loop_train_cpu_jax*.json`).
"""

import keras
from keras import ops

LOOP_PLATFORMS = ("cpu",)
"""JAX platforms whose inference runs the experts one at a time."""


def loops_over_experts(training):
    """Whether the stacked experts of this call run one at a time."""
    if training or keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() in LOOP_PLATFORMS


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
