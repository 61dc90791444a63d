"""Inference with the experts one at a time against one batched einsum, on
JAX's CPU backend (`moe_keras.dispatch.expert_loop`); with `--train`, the
same for a train step, where the shipped rule keeps the einsum.

One process, one `MoEDense(features, n, top_k=k, expert_hidden=hidden)`
model per `(n, k)`, the peer benchmark's shapes: the same weights and the
same routing (so the same bucket rung) run both ways, the loop
(`LOOP_PLATFORMS` as shipped) and the batched einsum (`LOOP_PLATFORMS`
emptied), each retraced for its way. Passes interleave the two; each times
`--steps` `predict_on_batch` calls (with `--train`, `train_on_batch` calls:
SGD, MSE to the inputs) after `--warmup` and keeps their median. To loop in
training, the benchmark swaps `moe_keras.dispatch.loops_over_experts` for
one that answers as at inference; the experts have no dropout, which the
loop does not apply.

    KERAS_BACKEND=jax python benchmarks/bench_expert_loop.py --json benchmarks/results/expert_loop_cpu_jax.json
    KERAS_BACKEND=jax python benchmarks/bench_expert_loop.py --train --json benchmarks/results/expert_loop_train_cpu_jax.json
"""

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.peer_shapes import add_shape_arguments  # noqa: E402
from benchmarks.peer_shapes import resolve_shape_arguments  # noqa: E402
from benchmarks.timing import median_ms  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_arguments(parser)
    parser.add_argument("--train", action="store_true", help="time train steps instead of predict calls")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    resolve_shape_arguments(args, quick_experts="8", quick_topk="2")
    return args


def call_ms(model, x, looped, steps, warmup, train=False):
    """Median ms of `steps` predict (or train) calls of `model` on `x`, its
    experts looped or batched."""
    from moe_keras import dispatch
    from moe_keras.dispatch import expert_loop

    shipped_platforms, shipped_rule = expert_loop.LOOP_PLATFORMS, dispatch.loops_over_experts
    expert_loop.LOOP_PLATFORMS = shipped_platforms if looped else ()
    if train:
        dispatch.loops_over_experts = lambda training: shipped_rule(False)
    try:
        if train:
            model.make_train_function(force=True)
            call = lambda: model.train_on_batch(x, x)  # noqa: E731
        else:
            model.make_predict_function(force=True)
            call = lambda: model.predict_on_batch(x)  # noqa: E731
        return median_ms(call, steps, warmup)
    finally:
        expert_loop.LOOP_PLATFORMS = shipped_platforms
        dispatch.loops_over_experts = shipped_rule


def run(args):
    import keras

    from moe_keras import MoEDense

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(args.batch, args.seq, args.features)).astype("float32")
    models = {}
    for n in args.experts:
        for k in args.topk:
            inputs = keras.Input((args.seq, args.features))
            layer = MoEDense(args.features, n, top_k=k, expert_hidden=args.hidden)
            models[(n, k)] = keras.Model(inputs, layer(inputs))
            models[(n, k)].compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse")
    passes = {case: {"loop_ms": [], "batched_ms": []} for case in models}
    for _ in range(args.repeats):
        for case, model in models.items():
            for looped, key in ((True, "loop_ms"), (False, "batched_ms")):
                passes[case][key].append(call_ms(model, x, looped, args.steps, args.warmup, args.train))
            print(f"n={case[0]:<4d} k={case[1]} loop {passes[case]['loop_ms'][-1]:7.1f} ms  "
                  f"batched {passes[case]['batched_ms'][-1]:7.1f} ms", flush=True)
    rows = []
    for (n, k), model in models.items():
        layer = model.layers[-1]
        choices = np.asarray(layer.expert_choices(x.reshape(-1, args.features))).ravel()
        busiest = np.bincount(choices, minlength=n).max() * n / choices.size
        rows.append({"n": n, "k": k, "busiest_over_mean": float(busiest), **passes[(n, k)]})
    return rows


def main(argv=None):
    args = parse_args(argv)
    import keras

    from pipelines import records

    if keras.backend.backend() != "jax":
        raise SystemExit("bench_expert_loop.py measures JAX's loop: run it with KERAS_BACKEND=jax")
    start = time.perf_counter()
    rows = run(args)
    return records.benchmark_record(args, start, rows, keras.backend.backend())


if __name__ == "__main__":
    main()
