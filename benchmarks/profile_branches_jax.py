"""What the dropless engine's untaken branches cost on JAX's CPU backend.

With static token counts the engine picks, per call, the smallest capacity
rung that holds the busiest expert (`ops.switch` over the ladder, with the
sorted-rows engine as overflow, `moe_keras.dispatch.strategy`). Only one
branch runs, but XLA sizes the call's temporary memory for the largest
branch. This script times, for one routing of `T` random tokens (the busiest
expert's rung is the same in every variant), the `MoEDense` inference call
and the bucketed mixture with:

* `taken_rung`: only the rung the call takes;
* `two_rungs`: the taken rung and the next one;
* `ladder`: the layer's ladder below the overflow bound (every rung up to
  `ROWS_MIN_IMBALANCE` times the mean load);
* `ladder_and_overflow`: the same plus the sorted-rows branch:
  `strategy.dropless_mixture`, what the layer runs;
* `layer`: the whole `MoEDense` call at inference.

Each variant is measured twice, in fresh processes: with the C library's
default allocator settings, and with `MALLOC_MMAP_THRESHOLD_` and
`MALLOC_TRIM_THRESHOLD_` raised to 4 GB, so that large temporary buffers
are reused from the heap instead of being mapped afresh (and page-faulted)
on every call. Medians of `--steps` jitted calls after 3 warm-up calls.

    python benchmarks/profile_branches_jax.py --json benchmarks/results/profile_branches_cpu_jax.json
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = ("taken_rung", "two_rungs", "ladder", "ladder_and_overflow", "layer")
RAISED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "4000000000"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--experts", default="8,64")
    parser.add_argument("--topk", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--json", metavar="OUT", help="write the run record here")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.features, args.hidden, args.experts, args.steps = 64, 8, 12, "4", 2
    args.experts = [int(v) for v in args.experts.split(",")]
    return args


def measure(args, num_experts):
    """Median ms of every variant for `num_experts`, in this process."""
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import keras
    import numpy as np

    from moe_keras import MoEDense
    from moe_keras.dispatch import dropless
    from moe_keras.dispatch import strategy

    n, k, d = num_experts, args.topk, args.features
    keras.utils.set_random_seed(0)
    x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(args.tokens, d)).astype("float32"))
    layer = MoEDense(d, n, top_k=k, expert_hidden=args.hidden)
    layer.build((None, d))
    routed = layer.route(x, training=False)
    indices, weights = routed.expert_indices, routed.expert_weights
    busiest = int(np.max(np.bincount(np.asarray(indices).reshape(-1), minlength=n)))
    top = math.ceil(strategy.ROWS_MIN_IMBALANCE * args.tokens * k / n)
    ladder = [c for c in dropless.bucket_capacities(args.tokens, n, k) if c <= top]
    taken = min(c for c in ladder if c >= busiest)

    def experts(buffers, layout):
        return layer._run_experts(layer.experts, buffers)

    def rungs_only(rungs):
        def call(x, indices, weights):
            choices = dropless.sort_by_expert(indices, n)
            return dropless.bucketed_mixture(x, indices, weights, choices, experts, n, rungs, None, False)
        return call

    def engine(x, indices, weights):
        # The layer's own engine: the ladder with the sorted rows as overflow.
        return strategy.dropless_mixture(
            x, indices, weights, n, run_buffers=experts,
            run_rows=lambda rows, plan, layout: layer._run_grouped(rows, plan), rematerialize=False)

    above = [c for c in ladder if c > taken]
    calls = {
        "taken_rung": rungs_only([taken]),
        "two_rungs": rungs_only([taken, *above[:1]]),
        "ladder": rungs_only(ladder),
        "ladder_and_overflow": engine,
        "layer": lambda x, indices, weights: layer(x, training=False),
    }
    times = {}
    for name, call in calls.items():
        function = jax.jit(call)
        for _ in range(3):
            jax.block_until_ready(function(x, indices, weights))
        samples = []
        for _ in range(args.steps):
            start = time.perf_counter()
            jax.block_until_ready(function(x, indices, weights))
            samples.append(1e3 * (time.perf_counter() - start))
        times[name] = statistics.median(samples)
    return {"n": n, "k": k, "busiest": busiest, "taken_rung": taken, "ladder": ladder, "ms": times}


def main(argv=None):
    args = parse_args(argv)
    if args.case is not None:
        print(json.dumps(measure(args, args.case)))
        return None
    from pipelines import records

    start = time.perf_counter()
    sizes = ["--tokens", str(args.tokens), "--features", str(args.features), "--hidden", str(args.hidden),
             "--topk", str(args.topk), "--steps", str(args.steps)]
    rows = []
    for n in args.experts:
        for allocator, extra in (("default", {}), ("raised mmap threshold", RAISED_MALLOC)):
            out = subprocess.run([sys.executable, __file__, "--case", str(n), *sizes], capture_output=True,
                                 text=True, check=True, env={**os.environ, **extra, "KERAS_BACKEND": "jax"}).stdout
            row = {**json.loads(out.strip().splitlines()[-1]), "allocator": allocator, "env": extra}
            rows.append(row)
            print(f"n={n} {allocator}: " + ", ".join(f"{v} {row['ms'][v]:.1f} ms" for v in VARIANTS), flush=True)
    return records.benchmark_record(args, start, rows, "jax", private=("json", "case"))


if __name__ == "__main__":
    main()
