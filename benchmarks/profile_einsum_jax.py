"""Why JAX's CPU runs the experts one at a time at inference: the experts'
MLP on `(n, C, d)` buffers as one batched einsum against a loop over the
experts (`moe_keras.dispatch.expert_loop.map_experts`), by rows per expert C.

Each row jits `relu(x @ W1) @ W2` (a forward pass, as at inference) for n
experts with their own kernels, on buffers of C rows of `features` each,
both ways, timed as the median of `--steps` calls after two warm-up calls;
passes interleave the rows.

    KERAS_BACKEND=jax python benchmarks/profile_einsum_jax.py --json benchmarks/results/profile_einsum_cpu_jax.json
"""

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.timing import median_ms  # noqa: E402

WAYS = ("batched_ms", "loop_ms")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", default="64,256")
    parser.add_argument("--rows", default="32,40,48,52,56,64,72,96,128,160", help="rows per expert C")
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="passes")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one pass (smoke test)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    if args.quick:
        args.experts, args.rows, args.features, args.hidden = "4", "8,16", 8, 12
        args.steps, args.repeats = 2, 1
    args.experts = [int(v) for v in args.experts.split(",")]
    args.rows = [int(v) for v in args.rows.split(",")]
    return args


def expert_mlp(rows, weights):
    """One expert's MLP on its `(C, d)` rows."""
    import jax

    return jax.nn.relu(rows @ weights["w1"]) @ weights["w2"]


def batched_mlp(buffers, weights):
    """Every expert's MLP on `(n, C, d)` buffers, as the buffer engines run it."""
    import jax
    import jax.numpy as jnp

    hidden = jax.nn.relu(jnp.einsum("etd,edh->eth", buffers, weights["w1"]))
    return jnp.einsum("eth,ehd->etd", hidden, weights["w2"])


def run(args):
    import jax
    import jax.numpy as jnp

    from moe_keras.dispatch.expert_loop import map_experts

    rng = np.random.default_rng(0)
    functions = {
        "batched_ms": jax.jit(batched_mlp),
        "loop_ms": jax.jit(lambda x, w: map_experts(expert_mlp, x, w)),
    }
    cases = {}
    for n in args.experts:
        weights = {
            "w1": jnp.asarray(rng.normal(0, 0.05, (n, args.features, args.hidden)), "float32"),
            "w2": jnp.asarray(rng.normal(0, 0.05, (n, args.hidden, args.features)), "float32"),
        }
        for rows in args.rows:
            buffers = jnp.asarray(rng.normal(size=(n, rows, args.features)), "float32")
            cases[(n, rows)] = (buffers, weights)
    passes = {case: {way: [] for way in WAYS} for case in cases}
    for _ in range(args.repeats):
        for (n, rows), operands in cases.items():
            for way in WAYS:
                passes[(n, rows)][way].append(median_ms(
                    lambda: jax.block_until_ready(functions[way](*operands)), args.steps, warmup=2))
            print(f"n={n:<4d} C={rows:<4d} " + "  ".join(
                f"{way} {passes[(n, rows)][way][-1]:7.1f}" for way in WAYS), flush=True)
    return [{"n": n, "rows": rows, "gflop": 4 * n * rows * args.features * args.hidden / 1e9,
             **passes[(n, rows)]} for (n, rows) in cases]


def main(argv=None):
    args = parse_args(argv)
    import keras

    from pipelines import records

    start = time.perf_counter()
    rows = run(args)
    return records.benchmark_record(args, start, rows, keras.backend.backend())


if __name__ == "__main__":
    main()
