"""Step-time benchmark of MoE dispatch paths against equal-active dense layers.

Measures one jit-compiled training step (forward, backward and an SGD
update, `train_on_batch`) per configuration and reports the median of the
timed steps after warm-up:

* `MoEDense` with MLP experts (`features -> hidden -> features`), for every
  `n` in `--experts` and `k` in `--topk`, with `dispatch="dense"` (dropless,
  every expert on every token) and `dispatch="sparse"` (`capacity_factor`
  1.0: expert buffers of `T * k / n` slots), against a `Dense(hidden * k,
  relu) -> Dense(features)` stack: the same parameters active per token.
* `MoEConv2D` with sample routing, `dispatch="sparse"` (CondConv: one mixed
  kernel per image, one grouped conv) and `dispatch="dense"` (all experts as
  one `n * filters`-wide conv), against a plain `Conv2D(filters)` (what a
  token actually runs under CondConv).

The backend is Keras' (`KERAS_BACKEND=jax|tensorflow|torch`, set it before
running). Examples::

    KERAS_BACKEND=jax python benchmarks/bench_moe.py --json results.json
    KERAS_BACKEND=jax python benchmarks/bench_moe.py --quick --json /tmp/q.json
"""

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def parse_args(argv=None):
    """Command-line flags; `--quick` shrinks every default for a smoke run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few steps (smoke test)")
    parser.add_argument("--json", metavar="OUT", help="write results here")
    parser.add_argument("--tokens", type=int, help="tokens per batch (8192)")
    parser.add_argument("--features", type=int, help="input/output width (256)")
    parser.add_argument("--hidden", type=int, help="expert hidden size (512)")
    parser.add_argument("--experts", help="comma-separated n (4,8,16,32,64)")
    parser.add_argument("--topk", help="comma-separated k (1,2)")
    parser.add_argument("--steps", type=int, help="timed steps (10)")
    parser.add_argument("--warmup", type=int, help="untimed steps (3)")
    parser.add_argument("--capacity-factor", type=float, default=1.0,
                        help="capacity factor of the sparse path")
    parser.add_argument("--image-size", type=int, help="conv image side (32)")
    parser.add_argument("--images", type=int, help="conv batch (64)")
    parser.add_argument("--channels", type=int, help="conv in/out channels (64)")
    parser.add_argument("--conv-experts", help="comma-separated conv n (4,8,16)")
    parser.add_argument("--no-conv", action="store_true", help="skip MoEConv2D")
    parser.add_argument("--no-dense", action="store_true", help="skip MoEDense")
    args = parser.parse_args(argv)
    defaults = dict(tokens=8192, features=256, hidden=512, experts="4,8,16,32,64",
                    topk="1,2", steps=10, warmup=3, image_size=32, images=64,
                    channels=64, conv_experts="4,8,16")
    if args.quick:
        defaults.update(tokens=256, features=16, hidden=32, experts="8",
                        topk="1", steps=2, warmup=1, image_size=8, images=8,
                        channels=8, conv_experts="4")
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.experts = [int(v) for v in str(args.experts).split(",")]
    args.topk = [int(v) for v in str(args.topk).split(",")]
    args.conv_experts = [int(v) for v in str(args.conv_experts).split(",")]
    return args


def machine_info(keras):
    """Platform, CPU count, backend, library versions and the device."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
    }
    # Installed versions from package metadata: importing TensorFlow just to
    # read its version costs seconds on a JAX run.
    for package in ("tensorflow", "jax", "torch"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        info["device"] = str(jax.devices()[0].device_kind)
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        info["device"] = gpus[0].name if gpus else "CPU"
    else:
        info["device"] = "unknown"
    return info


def time_step(keras, model, x, y, steps, warmup):
    """Median seconds of one compiled `train_on_batch` step.

    `train_on_batch` returns host numbers, so every call waits for the
    device: no asynchronous dispatch leaks into the next step's timing.
    """
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse",
                  jit_compile=True)
    for _ in range(warmup):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dense_rows(keras, args):
    """MoEDense sparse/dense vs the equal-active Dense stack."""
    from moe_keras import MoEDense

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.tokens, args.features)).astype("float32")
    y = rng.normal(size=(args.tokens, args.features)).astype("float32")
    rows = []
    for k in args.topk:
        keras.utils.set_random_seed(0)
        baseline = keras.Sequential([
            keras.Input((args.features,)),
            keras.layers.Dense(args.hidden * k, activation="relu"),
            keras.layers.Dense(args.features),
        ])
        seconds = time_step(keras, baseline, x, y, args.steps, args.warmup)
        rows.append(dict(layer="Dense", dispatch="baseline", n=None, k=k,
                         ms=1e3 * seconds))
        print_row(rows[-1])
        for n in args.experts:
            if k > n:
                continue
            for dispatch in ("dense", "sparse"):
                keras.utils.set_random_seed(0)
                layer = MoEDense(
                    args.features, num_experts=n, top_k=k,
                    expert_hidden=args.hidden, dispatch=dispatch,
                    capacity_factor=(args.capacity_factor
                                     if dispatch == "sparse" else None),
                )
                model = keras.Sequential([keras.Input((args.features,)), layer])
                seconds = time_step(keras, model, x, y, args.steps, args.warmup)
                rows.append(dict(layer="MoEDense", dispatch=dispatch, n=n, k=k,
                                 ms=1e3 * seconds))
                print_row(rows[-1])
    return rows


def conv_rows(keras, args):
    """MoEConv2D (sample routing) sparse/dense vs a plain Conv2D."""
    from moe_keras import MoEConv2D

    rng = np.random.default_rng(0)
    shape = (args.images, args.image_size, args.image_size, args.channels)
    x = rng.normal(size=shape).astype("float32")
    y = rng.normal(size=shape).astype("float32")
    keras.utils.set_random_seed(0)
    baseline = keras.Sequential([
        keras.Input(shape[1:]),
        keras.layers.Conv2D(args.channels, 3, padding="same"),
    ])
    rows = []
    seconds = time_step(keras, baseline, x, y, args.steps, args.warmup)
    rows.append(dict(layer="Conv2D", dispatch="baseline", n=None, k=None,
                     ms=1e3 * seconds))
    print_row(rows[-1])
    for k in args.topk:
        for n in args.conv_experts:
            if k > n:
                continue
            for dispatch in ("dense", "sparse"):
                keras.utils.set_random_seed(0)
                layer = MoEConv2D(args.channels, 3, num_experts=n, top_k=k,
                                  padding="same", dispatch=dispatch)
                model = keras.Sequential([keras.Input(shape[1:]), layer])
                seconds = time_step(keras, model, x, y, args.steps, args.warmup)
                rows.append(dict(layer="MoEConv2D", dispatch=dispatch, n=n, k=k,
                                 ms=1e3 * seconds))
                print_row(rows[-1])
    return rows


def print_row(row):
    n = "-" if row["n"] is None else row["n"]
    k = "-" if row["k"] is None else row["k"]
    print(f"{row['layer']:<10} {row['dispatch']:<9} {n!s:>4} {k!s:>3} "
          f"{row['ms']:10.2f} ms", flush=True)


def add_ratios(rows):
    """Adds `vs_baseline` (time over the equal-active dense layer) and, for
    sparse MoEDense, `vs_n8` (time over n=8 at the same k)."""
    base = {(r["layer"], r["k"]): r["ms"] for r in rows
            if r["dispatch"] == "baseline"}
    n8 = {(r["layer"], r["dispatch"], r["k"]): r["ms"] for r in rows
          if r["n"] == 8}
    for row in rows:
        if row["dispatch"] == "baseline":
            continue
        key = ("Dense", row["k"]) if row["layer"] == "MoEDense" else ("Conv2D", None)
        if key in base:
            row["vs_baseline"] = row["ms"] / base[key]
        ref = n8.get((row["layer"], row["dispatch"], row["k"]))
        if ref:
            row["vs_n8"] = row["ms"] / ref


def main(argv=None):
    args = parse_args(argv)
    import keras

    info = machine_info(keras)
    print(json.dumps(info))
    print(f"{'layer':<10} {'dispatch':<9} {'n':>4} {'k':>3} {'step':>13}")
    rows = []
    if not args.no_dense:
        rows += dense_rows(keras, args)
    if not args.no_conv:
        rows += conv_rows(keras, args)
    add_ratios(rows)
    print("\nlayer      dispatch     n   k       ms  vs_base  vs_n8")
    for r in rows:
        print(f"{r['layer']:<10} {r['dispatch']:<9} {str(r['n'] or '-'):>4} "
              f"{str(r['k'] or '-'):>3} {r['ms']:8.2f} "
              f"{r.get('vs_baseline', float('nan')):8.2f} "
              f"{r.get('vs_n8', float('nan')):6.2f}")
    if args.json:
        config = {name: getattr(args, name) for name in (
            "tokens", "features", "hidden", "experts", "topk", "steps",
            "warmup", "capacity_factor", "image_size", "images", "channels",
            "conv_experts")}
        with open(args.json, "w") as f:
            json.dump({"machine": info, "config": config, "rows": rows}, f,
                      indent=1)
    return rows


if __name__ == "__main__":
    main()
