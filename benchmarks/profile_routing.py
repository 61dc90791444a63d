"""Times the pieces of a sparse `MoEDense` step one by one (JAX).

What of the layer's cost grows with the number of experts `n`: the router
matmul and softmax with their gradient, the top-k selection and the capacity
ranks over the `(T, n)` scores, the dispatch plan, the token gather, and the
experts' own two batched matmuls over the `(n, capacity, d)` buffers, whose
FLOPs are the same at every `n` but whose weights grow with it. Medians of
20 jit-compiled runs, in ms::

    python benchmarks/profile_routing.py [--tokens 8192] [--features 256] [--hidden 512]
"""

import argparse
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.timing import median_ms  # noqa: E402
from moe_keras import dispatch  # noqa: E402
from moe_keras import routing  # noqa: E402


def jitted_ms(function, *args, runs=20):
    """Median ms of `runs` calls of `function` jitted, after three warm-up calls."""
    function = jax.jit(function)
    return median_ms(lambda: jax.block_until_ready(function(*args)), runs, warmup=3)


def expert_matmuls_loss(kernel_in, kernel_out, slots):
    hidden = jax.nn.relu(jax.numpy.einsum("ecd,edh->ech", slots, kernel_in))
    return (jax.numpy.einsum("ech,ehd->ecd", hidden, kernel_out) ** 2).sum()


def profile(tokens, features, num_experts, top_k, hidden):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(tokens, features)).astype("float32")
    kernel = 0.05 * rng.normal(size=(features, num_experts)).astype("float32")
    capacity = routing.expert_capacity(tokens, num_experts, top_k, 1.0)
    normalize = top_k > 1

    def router_loss(kernel, x):
        probabilities = routing.router_probabilities(x @ kernel)
        weights, _ = routing.top_k_routing(probabilities, top_k, None, normalize)
        return (weights**2).sum()

    probabilities = routing.router_probabilities(x @ kernel)
    _, indices = routing.top_k_routing(probabilities, top_k, None, normalize)
    positions, keep = routing.assign_capacity(indices, num_experts, capacity)
    plan = dispatch.sparse_dispatch_plan(indices, positions, keep, num_experts, capacity)
    slots = rng.normal(size=(num_experts, capacity, features)).astype("float32")
    kernel_in = 0.05 * rng.normal(size=(num_experts, features, hidden)).astype("float32")
    kernel_out = 0.05 * rng.normal(size=(num_experts, hidden, features)).astype("float32")
    return {
        "router fwd+bwd": jitted_ms(jax.grad(router_loss, argnums=(0, 1)), kernel, x),
        "top-k": jitted_ms(
            lambda p: routing.top_k_routing(p, top_k, None, normalize), probabilities
        ),
        "capacity ranks": jitted_ms(
            lambda i: routing.assign_capacity(i, num_experts, capacity), indices
        ),
        "dispatch plan": jitted_ms(
            lambda i, p, k: dispatch.sparse_dispatch_plan(i, p, k, num_experts, capacity),
            indices, positions, keep,
        ),
        "gather fwd+bwd": jitted_ms(
            jax.grad(lambda x: (dispatch.gather_tokens(x, plan, num_experts) ** 2).sum()), x
        ),
        "expert matmuls fwd+bwd": jitted_ms(
            jax.grad(expert_matmuls_loss, argnums=(0, 1, 2)), kernel_in, kernel_out, slots
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--experts", default="8,64")
    parser.add_argument("--topk", default="1,2")
    args = parser.parse_args()
    for top_k in (int(v) for v in args.topk.split(",")):
        for num_experts in (int(v) for v in args.experts.split(",")):
            times = profile(args.tokens, args.features, num_experts, top_k, args.hidden)
            print(f"k={top_k} n={num_experts}: " + ", ".join(
                f"{name} {ms:.2f} ms" for name, ms in times.items()), flush=True)


if __name__ == "__main__":
    main()
