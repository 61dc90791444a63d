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
* With `--pipeline`, the digit-recognizer pipeline's epoch time (its own
  models, compile settings and batch size, on the embedded 5,000-digit
  sample's 3,600 training images) for the baseline CNN (dense h64), the
  equal-active dense h192 and MoE(3,5) h64.

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
    parser.add_argument("--dense-max-experts", type=int,
                        help="skip dispatch='dense' above this n (its cost is n times "
                             "the active compute: 20 s a step at n=64 on 2 CPU cores)")
    parser.add_argument("--pipeline", action="store_true",
                        help="also time the pipeline's epochs (baseline CNN vs MoE(3,5) h64)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure every configuration this many times, in "
                             "separate passes, and report the median pass "
                             "(a shared machine's noise moves single passes)")
    parser.add_argument("--pipeline-epochs", type=int,
                        help="epochs per pipeline model; the first (compilation) is not counted (4)")
    args = parser.parse_args(argv)
    defaults = dict(tokens=8192, features=256, hidden=512, experts="4,8,16,32,64",
                    topk="1,2", steps=10, warmup=3, image_size=32, images=64,
                    channels=64, conv_experts="4,8,16", pipeline_epochs=4)
    if args.quick:
        defaults.update(tokens=256, features=16, hidden=32, experts="8",
                        topk="1", steps=2, warmup=1, image_size=8, images=8,
                        channels=8, conv_experts="4", pipeline_epochs=2)
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
    """Median seconds of one compiled `train_on_batch` step (forward,
    backward and an SGD update of every weight).

    `train_on_batch` returns host numbers, so every call waits for the
    device: no asynchronous dispatch leaks into the next step's timing.
    """
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse",
                  jit_compile=True)
    for _ in range(warmup):
        model.train_on_batch(x, y)
    return _median_seconds(lambda: model.train_on_batch(x, y), steps)


def forward_backward_fn(keras, model, x, y):
    """A compiled function computing the loss (MSE plus the layer's
    auxiliary losses) and the gradients of every trainable weight: the
    forward and backward pass without the optimizer's update, whose cost
    is proportional to all parameters (`n` experts) whatever the dispatch.

    Returns a no-argument callable that runs one pass and waits for it, or
    `None` on a backend without a compiled gradient here (torch).
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def loss_fn(trainable, non_trainable):
            outputs, _, losses = model.stateless_call(
                trainable, non_trainable, x, training=True, return_losses=True)
            return keras.ops.mean(keras.ops.square(outputs - y)) + sum(losses)

        grad_fn = jax.jit(jax.value_and_grad(loss_fn))
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        return lambda: jax.block_until_ready(grad_fn(trainable, non_trainable))
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def grad_fn():
            with tf.GradientTape() as tape:
                outputs = model(x, training=True)
                loss = tf.reduce_mean(tf.square(outputs - y))
                loss = loss + sum(model.losses)
            return loss, tape.gradient(loss, model.trainable_variables)

        def run():
            loss, grads = grad_fn()
            # The last gradient is computed last; reading it waits for all.
            return loss.numpy(), grads[-1].numpy()

        return run
    return None


def time_forward_backward(keras, model, x, y, steps, warmup):
    """Median seconds of one compiled forward+backward pass, or `None`."""
    run = forward_backward_fn(keras, model, x, y)
    if run is None:
        return None
    for _ in range(warmup):
        run()
    return _median_seconds(run, steps)


def _median_seconds(run, steps):
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(keras, model, x, y, args, **row):
    """A result row: `fwd_bwd_ms` (forward+backward) and `ms` (the whole
    training step with its update), each the median over `args.steps`."""
    fwd_bwd = time_forward_backward(keras, model, x, y, args.steps, args.warmup)
    step = time_step(keras, model, x, y, args.steps, args.warmup)
    row.update(fwd_bwd_ms=None if fwd_bwd is None else 1e3 * fwd_bwd,
               ms=1e3 * step)
    print_row(row)
    return row


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
        rows.append(measure(keras, baseline, x, y, args, layer="Dense",
                            dispatch="baseline", n=None, k=k))
        for n in args.experts:
            if k > n:
                continue
            # Both dispatches compute the same layer (same capacity).
            auto = MoEDense(args.features, num_experts=n, top_k=k,
                            capacity_factor=args.capacity_factor).resolved_dispatch(True)
            # "capacity" (and "dropless") are what this script calls "sparse".
            auto = "dense" if auto == "dense" else "sparse"
            for dispatch in ("dense", "sparse"):
                if (dispatch == "dense" and args.dense_max_experts
                        and n > args.dense_max_experts):
                    continue
                keras.utils.set_random_seed(0)
                layer = MoEDense(
                    args.features, num_experts=n, top_k=k,
                    expert_hidden=args.hidden, dispatch=dispatch,
                    capacity_factor=args.capacity_factor,
                )
                model = keras.Sequential([keras.Input((args.features,)), layer])
                rows.append(measure(keras, model, x, y, args, layer="MoEDense",
                                    dispatch=dispatch, n=n, k=k,
                                    auto_picks=dispatch == auto))
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
    rows.append(measure(keras, baseline, x, y, args, layer="Conv2D",
                        dispatch="baseline", n=None, k=None))
    for k in args.topk:
        for n in args.conv_experts:
            if k > n:
                continue
            auto = MoEConv2D(args.channels, 3, num_experts=n, top_k=k,
                             padding="same")
            auto.build(shape)
            for dispatch in ("dense", "sparse"):
                keras.utils.set_random_seed(0)
                layer = MoEConv2D(args.channels, 3, num_experts=n, top_k=k,
                                  padding="same", dispatch=dispatch)
                model = keras.Sequential([keras.Input(shape[1:]), layer])
                rows.append(measure(keras, model, x, y, args, layer="MoEConv2D",
                                    dispatch=dispatch, n=n, k=k,
                                    auto_picks=dispatch == auto.resolved_dispatch))
    return rows


def pipeline_rows(keras, args):
    """Epoch time of the digit-recognizer pipeline's models on the embedded
    sample: the same `fit` as `python -m pipelines.digit_recognizer`."""
    import tempfile

    from pipelines import data
    from pipelines.models import ModelConfig
    from pipelines.train import TrainConfig
    from pipelines.train import fit

    with tempfile.TemporaryDirectory() as directory:
        data.write_embedded_default(directory)
        images, labels = data.read_train_csv(os.path.join(directory, "train.csv"))
    x_train, y_train, x_val, y_val = data.train_validation_split(
        images, labels, validation_fraction=0.1, seed=0)
    if args.quick:
        x_train, y_train, x_val, y_val = x_train[:256], y_train[:256], x_val[:64], y_val[:64]
    models = [("cnn-dense-h64", ModelConfig(moe=None, hidden=64)),
              ("cnn-dense-h192", ModelConfig(moe=None, hidden=192)),
              ("cnn-moe3of5-h64", ModelConfig(moe=(3, 5), hidden=64))]
    train_config = TrainConfig(epochs=args.pipeline_epochs, patience=args.pipeline_epochs,
                               verbose=0)

    class EpochTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    rows = []
    for name, model_config in models:
        keras.utils.set_random_seed(0)
        timer = EpochTimer()
        fit(model_config, train_config, x_train, y_train, x_val, y_val,
            callbacks=[timer])
        seconds = statistics.median(timer.seconds[1:])
        rows.append(dict(layer="pipeline", dispatch=name,
                         n=model_config.moe[1] if model_config.moe else None,
                         k=model_config.moe[0] if model_config.moe else None,
                         ms=1e3 * seconds, images=len(x_train)))
        print_row(rows[-1])
    return rows


def _fmt(value):
    """A time or ratio for the tables, `-` where it was not measured."""
    return "-" if value is None else f"{value:.2f}"


def print_row(row):
    n = "-" if row["n"] is None else row["n"]
    k = "-" if row["k"] is None else row["k"]
    print(f"{row['layer']:<10} {row['dispatch']:<15} {n!s:>4} {k!s:>3} "
          f"{_fmt(row.get('fwd_bwd_ms')):>10} {_fmt(row['ms']):>10}", flush=True)


def median_rows(passes):
    """One row per configuration: the median over the passes of each time,
    with every pass's times kept in `ms_passes` / `fwd_bwd_ms_passes`."""
    rows = [dict(row) for row in passes[0]]
    for index, row in enumerate(rows):
        for metric in ("ms", "fwd_bwd_ms"):
            # Pipeline rows time only the whole step: they have no
            # forward+backward entry to take a median of.
            values = [p[index].get(metric) for p in passes]
            if None in values:
                continue
            row[f"{metric}_passes"] = values
            row[metric] = statistics.median(values)
    return rows


def add_ratios(rows):
    """Adds, for the forward+backward time (`fwd_bwd_`) and the whole step:
    `vs_baseline`, the time over the equal-active dense layer (for the
    pipeline rows, over the baseline CNN), and `vs_n8`, the time over n=8
    with the same layer, dispatch and k."""
    for metric, prefix in (("ms", ""), ("fwd_bwd_ms", "fwd_bwd_")):
        base = {(r["layer"], r["k"]): r.get(metric) for r in rows
                if r["dispatch"] == "baseline"}
        base.update({("pipeline", None): r.get(metric) for r in rows
                     if r["dispatch"] == "cnn-dense-h64"})
        n8 = {(r["layer"], r["dispatch"], r["k"]): r.get(metric) for r in rows
              if r["n"] == 8}
        for row in rows:
            if row["dispatch"] in ("baseline", "cnn-dense-h64") or row.get(metric) is None:
                continue
            key = {"MoEDense": ("Dense", row["k"]), "MoEConv2D": ("Conv2D", None),
                   "pipeline": ("pipeline", None)}[row["layer"]]
            if base.get(key):
                row[f"{prefix}vs_baseline"] = row[metric] / base[key]
            ref = n8.get((row["layer"], row["dispatch"], row["k"]))
            if ref:
                row[f"{prefix}vs_n8"] = row[metric] / ref


def auto_check(rows):
    """One line per MoE layer, n and k: the dispatch `"auto"` picks and the
    one whose training step measured faster."""
    pairs = {}
    for r in rows:
        if "auto_picks" in r:
            pairs.setdefault((r["layer"], r["n"], r["k"]), []).append(r)
    lines = []
    for (layer, n, k), measured in pairs.items():
        picked = [r["dispatch"] for r in measured if r["auto_picks"]]
        if len(measured) < 2 or not picked:
            continue
        fastest = min(measured, key=lambda r: r["ms"])["dispatch"]
        verdict = "faster" if picked[0] == fastest else "SLOWER"
        lines.append(f"auto {layer} n={n} k={k}: picks {picked[0]}, the {verdict} "
                     "of the two measured steps")
    return lines


def main(argv=None):
    args = parse_args(argv)
    import keras

    info = machine_info(keras)
    print(json.dumps(info))
    print(f"{'layer':<10} {'dispatch':<15} {'n':>4} {'k':>3} "
          f"{'fwd+bwd ms':>10} {'step ms':>10}")
    passes = []
    for _ in range(args.repeats):
        rows = []
        if not args.no_dense:
            rows += dense_rows(keras, args)
        if not args.no_conv:
            rows += conv_rows(keras, args)
        if args.pipeline:
            rows += pipeline_rows(keras, args)
        passes.append(rows)
    rows = median_rows(passes)
    add_ratios(rows)
    from pipelines.records import markdown_table

    print()
    print(markdown_table(
        ["layer", "dispatch", "n", "k", "fwd+bwd ms", "vs_base", "vs_n8",
         "step ms", "vs_base", "vs_n8", "auto"],
        [[r["layer"], r["dispatch"], r["n"] or "-", r["k"] or "-",
          _fmt(r.get("fwd_bwd_ms")), _fmt(r.get("fwd_bwd_vs_baseline")),
          _fmt(r.get("fwd_bwd_vs_n8")), _fmt(r["ms"]), _fmt(r.get("vs_baseline")),
          _fmt(r.get("vs_n8")), "picked" if r.get("auto_picks") else ""] for r in rows]))
    for line in auto_check(rows):
        print(line)
    if args.json:
        config = {name: getattr(args, name) for name in (
            "tokens", "features", "hidden", "experts", "topk", "steps",
            "warmup", "repeats", "capacity_factor", "image_size", "images",
            "channels", "conv_experts", "dense_max_experts", "pipeline_epochs")}
        from pipelines.records import write_text_atomically

        write_text_atomically(args.json, json.dumps(
            {"machine": info, "config": config, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
