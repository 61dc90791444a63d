"""The measurements behind `moe_keras/dispatch/strategy.py`'s choices.

Two tables, one backend per run (`KERAS_BACKEND`):

* `grouped`: one expert layer `(R, d) x (n, d, h)` on `R = T * k` rows sorted
  by expert with the loads a random router gives, forward and backward,
  compiled: the plain `(R, d) x (d, h)` matmul of the same FLOPs (the floor),
  the bucketed-capacity einsum at the rung that holds the busiest expert,
  the portable block kernel for several block sizes (`blocks_*`: one
  batched matmul over copied kernels; on JAX also `scanned_blocks_*`, a
  loop over the blocks, the JAX default), and on JAX `jax.lax.ragged_dot`.
* `dispatch`: a whole `MoEDense` train step (`train_on_batch`, SGD) with
  `dispatch="dense"` against the default dropless sparse dispatch, for
  `n / k` from 1.5 to 8: where `dispatch="auto"` should switch; and the
  dense dispatch as stacked einsums (`dense_einsum`, the path before the
  experts became two plain matmuls), side by side.
* `imbalance` (`--imbalance`): the same train step with a spread router and
  with one collapsed onto one or two experts, for the dense dispatch and
  the dropless engines forced to buffers, forced to sorted rows, and as
  `strategy.ROWS_MIN_IMBALANCE` chooses: where that bound should sit.

    KERAS_BACKEND=jax python benchmarks/bench_kernels.py --json benchmarks/results/kernels_cpu_jax.json
    KERAS_BACKEND=tensorflow python benchmarks/bench_kernels.py --json benchmarks/results/kernels_cpu_tf.json
    KERAS_BACKEND=tensorflow python benchmarks/bench_kernels.py --imbalance --json benchmarks/results/imbalance_cpu_tf.json
    KERAS_BACKEND=jax python benchmarks/bench_kernels.py --imbalance --json benchmarks/results/imbalance_cpu_jax.json
    KERAS_BACKEND=torch python benchmarks/bench_kernels.py --imbalance --predict --json benchmarks/results/imbalance_cpu_torch.json
    KERAS_BACKEND=torch python benchmarks/bench_kernels.py --json benchmarks/results/kernels_cpu_torch.json

On PyTorch only the dispatch table runs (eager, as Keras trains there).
"""

import argparse
import contextlib
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.timing import median_ms  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--experts", default="8,64")
    parser.add_argument("--blocks", default="32,64,128")
    parser.add_argument("--ratios", default="3/2,2/1,4/2,3/1,8/2,4/1,8/1",
                        help="n/k pairs for the dispatch table")
    parser.add_argument("--imbalance", action="store_true", help="only the imbalance table")
    parser.add_argument("--dispatch", action="store_true",
                        help="only the dispatch table (the only one on PyTorch, which has no compiled grouped kernels here)")
    parser.add_argument("--tokens", default="1024,4096", help="tokens per step of the imbalance table")
    parser.add_argument("--predict", action="store_true", help="the imbalance table also times predict calls")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.features, args.hidden = 64, 8, 12
        args.experts, args.blocks, args.ratios = "4", "8", "2/1,4/1"
        args.steps, args.repeats, args.tokens = 2, 1, "32"
    args.experts = [int(v) for v in args.experts.split(",")]
    args.blocks = [int(v) for v in args.blocks.split(",")]
    args.ratios = [tuple(int(v) for v in pair.split("/")) for pair in args.ratios.split(",")]
    args.tokens = [int(v) for v in args.tokens.split(",")]
    return args


def compile_grad(function):
    """`function(x, w) -> y`, as a compiled `sum(y**2)` forward+backward."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(jax.grad(lambda x, w: (function(x, w) ** 2).sum(), argnums=(0, 1)))
    import tensorflow as tf

    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(function(x, w) ** 2)
        return tape.gradient(loss, [x, w])

    return tf.function(step, jit_compile=True)


def timed_ms(call, steps):
    """Median ms of `call()`, which returns a list whose first item is read
    back to wait for it, after one warm-up call."""
    import keras

    return median_ms(lambda: keras.ops.convert_to_numpy(call()[0]), steps, warmup=1)


def grouped_rows(args):
    import keras
    from keras import ops

    from moe_keras import dispatch

    rng = np.random.default_rng(0)
    rows = []
    for n in args.experts:
        sizes = np.bincount(rng.integers(0, n, args.rows), minlength=n).astype("int32")
        busiest = int(sizes.max())
        x = ops.convert_to_tensor(rng.normal(size=(args.rows, args.features)).astype("float32"))
        w = ops.convert_to_tensor((rng.normal(size=(n, args.features, args.hidden)) * 0.05).astype("float32"))
        group_sizes = ops.convert_to_tensor(sizes)
        rung = min(c for c in dispatch.bucket_capacities(args.rows, n, 1) if c >= busiest)
        buffers = ops.convert_to_tensor(rng.normal(size=(n, rung, args.features)).astype("float32"))
        kernels = {
            "plain_matmul": (lambda x, w: ops.matmul(x, w[0]), x),
            f"buckets_rung_{rung}": (lambda b, w: ops.einsum("etd,edh->eth", b, w), buffers),
        }
        prefixes = {dispatch.batched_blocks_matmul: "blocks", dispatch.scanned_blocks_matmul: "scanned_blocks"}
        for product in dispatch.block_products():
            prefix = prefixes[product]
            for block in args.blocks:
                kernels[f"{prefix}_{block}"] = (
                    lambda x, w, block=block, product=product: dispatch.block_grouped_matmul(
                        x, w, group_sizes, block, product), x)
        if keras.backend.backend() == "jax":
            import jax

            kernels["ragged_dot"] = (lambda x, w: jax.lax.ragged_dot(x, w, group_sizes), x)
        compiled = {name: (compile_grad(f), first) for name, (f, first) in kernels.items()}
        times = {name: [] for name in compiled}
        for _ in range(args.repeats):
            for name, (step, first) in compiled.items():
                times[name].append(timed_ms(lambda: step(first, w), args.steps))
        for name, passes in times.items():
            rows.append({"table": "grouped", "n": n, "kernel": name, "fwd_bwd_ms": passes,
                         "busiest_over_mean": busiest * n / args.rows})
            print(f"grouped n={n:<3d} {name:18s} {statistics.median(passes):8.1f} ms", flush=True)
    return rows


def stacked_einsum_moe():
    """`MoEDense` whose dense dispatch runs the experts as stacked einsums,
    `(n, T, h)` then `(n, T, units)` mixed by a third einsum: the dense
    path before the experts' layers became two plain matmuls
    (`MoEDense._mix_all_experts`), for a side-by-side measurement."""
    from moe_keras import MoEDense
    from moe_keras.dispatch import dense_combine

    class StackedEinsumMoEDense(MoEDense):
        def _mix_all_experts(self, weights, tokens, combine=None, training=False):
            return dense_combine(self._run_experts(weights, tokens, training), combine)

    return StackedEinsumMoEDense


def dispatch_rows(args):
    import keras

    from moe_keras import MoEDense

    tokens = args.rows // 2
    x = np.random.default_rng(1).normal(size=(tokens, args.features)).astype("float32")
    layers = {"dense": MoEDense, "sparse": MoEDense, "dense_einsum": stacked_einsum_moe()}
    models = {}
    for n, k in args.ratios:
        for mode, layer in layers.items():
            keras.utils.set_random_seed(0)
            inputs = keras.Input((args.features,))
            # The same active expert width per token for every n/k.
            hidden = max(1, 2 * args.hidden // k)
            dispatch = "sparse" if mode == "sparse" else "dense"
            outputs = layer(args.features, n, top_k=k, expert_hidden=hidden, dispatch=dispatch)(inputs)
            model = keras.Model(inputs, outputs)
            model.compile(optimizer="sgd", loss="mse")
            models[(n, k, mode)] = model
    times = {case: [] for case in models}
    for _ in range(args.repeats):
        for case, model in models.items():
            times[case].append(timed_ms(lambda: [model.train_on_batch(x, x)], args.steps))
    rows = []
    for (n, k, mode), passes in times.items():
        rows.append({"table": "dispatch", "n": n, "k": k, "dispatch": mode, "train_ms": passes})
        print(f"dispatch n={n:<3d} k={k} {mode:12s} {statistics.median(passes):8.1f} ms", flush=True)
    return rows


# Engine choices of the imbalance table: (dispatch, ROWS_MIN_IMBALANCE).
ENGINES = {"dense": ("dense", None), "buffers": ("sparse", 1e9), "rows": ("sparse", 1e-3), "auto": ("sparse", None)}


@contextlib.contextmanager
def engine_bound(engine):
    """`strategy.ROWS_MIN_IMBALANCE` set for `engine` of `ENGINES` (`None`:
    as shipped) while the block runs, then restored. Graph backends read it
    when they trace; eager PyTorch on every call."""
    from moe_keras.dispatch import strategy

    shipped = strategy.ROWS_MIN_IMBALANCE
    bound = ENGINES[engine][1]
    strategy.ROWS_MIN_IMBALANCE = shipped if bound is None else bound
    try:
        yield
    finally:
        strategy.ROWS_MIN_IMBALANCE = shipped


def imbalance_rows(args):
    import keras

    from moe_keras import MoEDense

    rng = np.random.default_rng(2)
    rows = []
    for tokens in args.tokens:
        for n, k in ((8, 2), (64, 2), (64, 1)) if not args.quick else ((4, 1),):
            for router in ("spread", "collapsed"):
                x = rng.normal(size=(tokens, args.features)).astype("float32")
                if router == "collapsed":
                    x = np.abs(x)
                models = {}
                for engine, (mode, _) in ENGINES.items():
                    keras.utils.set_random_seed(0)
                    inputs = keras.Input((args.features,))
                    layer = MoEDense(args.features, n, top_k=k, expert_hidden=args.hidden, dispatch=mode,
                                     switch_loss_weight=0.0)
                    model = keras.Model(inputs, layer(inputs))
                    model.compile(optimizer="sgd", loss="mse")
                    if router == "collapsed":
                        # Positive inputs and a router whose first two columns
                        # are all positive: experts 0 and 1 take every token.
                        kernel = np.zeros((args.features, n), "float32")
                        kernel[:, 0], kernel[:, 1] = 1.0, 0.5
                        layer.router_kernel.assign(kernel)
                    with engine_bound(engine):  # traced now, under this engine's bound
                        model.train_on_batch(x, x)
                    models[engine] = model
                choices = np.asarray(models["auto"].layers[-1].expert_choices(x)).ravel()
                busiest = np.bincount(choices, minlength=n).max() / (tokens * k / n)
                times = {engine: [] for engine in models}
                predict_times = {engine: [] for engine in models}
                for _ in range(args.repeats):
                    for engine, model in models.items():
                        with engine_bound(engine):
                            times[engine].append(timed_ms(lambda: [model.train_on_batch(x, x)], args.steps))
                            if args.predict:
                                predict_times[engine].append(
                                    timed_ms(lambda: [model.predict_on_batch(x)], args.steps))
                for engine, passes in times.items():
                    row = {"table": "imbalance", "tokens": tokens, "n": n, "k": k, "router": router,
                           "busiest_over_mean": float(busiest), "engine": engine, "train_ms": passes}
                    if args.predict:
                        row["predict_ms"] = predict_times[engine]
                    rows.append(row)
                print(f"imbalance T={tokens} n={n} k={k} {router:9s} busiest/mean={busiest:5.1f} "
                      + " ".join(f"{e} {statistics.median(v):7.1f}" for e, v in times.items())
                      + ("  predict " + " ".join(f"{e} {statistics.median(v):7.1f}" for e, v in predict_times.items())
                         if args.predict else ""), flush=True)
    return rows


def main(argv=None):
    args = parse_args(argv)
    import keras

    from pipelines import records

    start = time.perf_counter()
    if args.imbalance:
        rows = imbalance_rows(args)
    elif args.dispatch or keras.backend.backend() == "torch":
        rows = dispatch_rows(args)
    else:
        rows = grouped_rows(args) + dispatch_rows(args)
    return records.benchmark_record(args, start, rows, keras.backend.backend())


if __name__ == "__main__":
    main()
