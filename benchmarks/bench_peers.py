"""MoEDense against its peers: train step, predict and inference memory.

One process, one backend (`KERAS_BACKEND`), every model built once; the
timed passes then interleave the models, so a slow spell of a shared
machine hits them alike. For each token shape `(batch, seq, features)`,
expert count `n` and `k`:

* `dense_ffn`: `Dense(hidden * k, relu) -> Dense(features)`, the same
  parameters active per token as the MoE, the compute an MoE should match;
* `dense_ffn_graph` (TensorFlow only): the same without XLA, as the MoE
  models run on TensorFlow (`moe_keras.dispatch.strategy.supports_xla`);
* `moe_default`: `MoEDense(features, n, top_k=k, expert_hidden=hidden)`
  with every other argument at its default;
* `moe_cf1.25`: the same with `capacity_factor=1.25` (tokens past an
  expert's capacity dropped in training);
* `keras_hub_mixtral`: KerasHub's `MixtralSparseMoeBlock` with SwiGLU experts
  of intermediate size `2 * hidden / 3`, the same parameters per expert
  (KerasHub imported from its source tree: the block is not exported).

A train step is one `train_on_batch` (MSE to the inputs, SGD, the layers'
auxiliary losses included) with each model's default `jit_compile="auto"`;
predict is one `predict_on_batch`. Each pass times `--steps` calls after
`--warmup` untimed ones and keeps their median; the record keeps every
pass, and tables quote the median pass with the range. Peak inference
memory is measured in a fresh process per model (`--memory`, Linux): the
rise of the peak resident set (`VmHWM`) during the first `predict_on_batch`
over the resident set of the built model before it (so it includes what
tracing and compiling the predict function take, alike for every model).

`--floors` times, in the same passes, two things every model of a row must
do whatever its dispatch, each compiled on its own over copies of the
model's trainable weights: one SGD update (`w -= lr * g`, which a train
step applies to every expert that received a token, i.e. to all of them at
these sizes) and one read of every weight (a sum over them; predict reads
each weight at least once). The MoE's FLOPs per token equal the Dense
FFN's, so a dispatch with no cost of its own would take the Dense FFN's
time plus what these add over the Dense FFN's own weights.

    KERAS_BACKEND=tensorflow python benchmarks/bench_peers.py --json benchmarks/results/peers_cpu_tf.json
    KERAS_BACKEND=jax python benchmarks/bench_peers.py --json benchmarks/results/peers_cpu_jax.json
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

MODELS = ("dense_ffn", "dense_ffn_graph", "moe_default", "moe_cf1.25", "keras_hub_mixtral")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_arguments(parser)
    parser.add_argument("--json", metavar="OUT", help="write the run record here")
    parser.add_argument("--models", help=f"comma-separated, from {MODELS} (all that apply)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure peak inference memory, one process per model")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    parser.add_argument("--floors", action="store_true",
                        help="also time an SGD update of, and one read of, each model's weights")
    parser.add_argument("--peer-max-repeats-experts", type=int, default=64,
                        help="above this n, KerasHub's block (every expert on every "
                             "token) is timed in the first pass only")
    args = parser.parse_args(argv)
    resolve_shape_arguments(args, quick_experts="4,8", quick_topk="1,2")
    if args.models is None:
        import keras

        args.models = [m for m in MODELS
                       if m != "dense_ffn_graph" or keras.backend.backend() == "tensorflow"]
    else:
        args.models = [m for m in args.models.split(",") if m]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {MODELS}")
    return args


def build(name, args, num_experts, top_k):
    import keras

    from moe_keras import MoEDense

    inputs = keras.Input((args.seq, args.features))
    if name.startswith("dense_ffn"):
        hidden = keras.layers.Dense(args.hidden * top_k, activation="relu")(inputs)
        outputs = keras.layers.Dense(args.features)(hidden)
    elif name == "moe_default":
        outputs = MoEDense(args.features, num_experts, top_k=top_k, expert_hidden=args.hidden)(inputs)
    elif name == "moe_cf1.25":
        outputs = MoEDense(args.features, num_experts, top_k=top_k,
                           expert_hidden=args.hidden, capacity_factor=1.25)(inputs)
    else:
        from keras_hub.src.models.mixtral.mixtral_decoder import MixtralSparseMoeBlock

        # SwiGLU experts have three d x m matrices, MoEDense's MLP two d x h:
        # m = 2h/3 gives both the same parameters per expert.
        block = MixtralSparseMoeBlock(args.features, 2 * args.hidden // 3, num_experts, top_k=top_k)
        outputs, _ = block(inputs)
    model = keras.Model(inputs, outputs)
    jit_compile = False if name == "dense_ffn_graph" else "auto"
    model.compile(optimizer="sgd", loss="mse", jit_compile=jit_compile)
    return model


def peak_rss_rise_mb(call):
    """Runs `call()`; returns how far the process's peak RSS rose above its
    RSS before the call, in MB (Linux), or None elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        call()
        return None

    def status(field):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
        return None

    before = status("VmRSS:")
    call()
    return status("VmHWM:") - before


def first_predict_peak_mb(args):
    """In this process: builds one model and returns the peak RSS rise of
    its first predict (see the module doc)."""
    import keras

    name, n, k = args.memory_case.split(",")
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(args.batch, args.seq, args.features)).astype("float32")
    model = build(name, args, int(n), int(k))
    return peak_rss_rise_mb(lambda: model.predict_on_batch(x))


def memory_in_fresh_processes(args, cases):
    """`first_predict_peak_mb` of every case, each in a new interpreter."""
    import json
    import subprocess

    sizes = ["--batch", str(args.batch), "--seq", str(args.seq),
             "--features", str(args.features), "--hidden", str(args.hidden)]
    peaks = {}
    for case in cases:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-case", ",".join(map(str, case)), *sizes],
            capture_output=True, text=True, check=True, env=os.environ,
        ).stdout
        peaks[case] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
        print(f"memory: {case[0]:18s} n={case[1]:<4d} k={case[2]} {peaks[case]:8.1f} MB", flush=True)
    return peaks


def max_load_ratio(model):
    """Busiest expert's load over the mean, over every timed train step: the
    dropless engines' compute follows it (None for models without MoELayer)."""
    from moe_keras import MoELayer

    layers = [layer for layer in model.layers if isinstance(layer, MoELayer)]
    return layers[0].routing_stats()["max_load_ratio"] if layers else None


def weight_floor_calls(model):
    """`(update, read)`: compiled calls that apply one SGD update to copies
    of `model`'s trainable weights and read every one of them once."""
    import keras

    values = [keras.ops.convert_to_numpy(v.value) for v in model.trainable_variables]
    if keras.backend.backend() == "jax":
        import jax
        import jax.numpy as jnp

        state = {"weights": [jnp.asarray(v) for v in values]}
        grads = [jnp.full_like(w, 1e-3) for w in state["weights"]]
        # Donated, as Keras' own JAX train step donates the weights it updates.
        step = jax.jit(lambda ws, gs: [w - 0.01 * g for w, g in zip(ws, gs)], donate_argnums=0)
        total = jax.jit(lambda ws: sum(jnp.sum(w) for w in ws))

        def update():
            state["weights"] = jax.block_until_ready(step(state["weights"], grads))

        return update, lambda: jax.block_until_ready(total(state["weights"]))
    import tensorflow as tf

    weights = [tf.Variable(v) for v in values]
    grads = [tf.fill(v.shape, 1e-3) for v in values]

    @tf.function(jit_compile=True)
    def update():
        for weight, grad in zip(weights, grads):
            weight.assign_sub(0.01 * grad)

    @tf.function(jit_compile=True)
    def total():
        return tf.add_n([tf.reduce_sum(w) for w in weights])

    return lambda: update(), lambda: total().numpy()


def run(args):
    import keras

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(args.batch, args.seq, args.features)).astype("float32")
    cases = [(name, n, k) for n in args.experts for k in args.topk for name in args.models
             if not (name.startswith("dense_ffn") and n != args.experts[0])]
    models = {case: build(*case[:1], args, *case[1:]) for case in cases}
    metrics = ["train_ms", "predict_ms"] + (["sgd_update_ms", "weights_read_ms"] if args.floors else [])
    passes = {case: {metric: [] for metric in metrics} for case in cases}
    floors = {case: weight_floor_calls(model) for case, model in models.items()} if args.floors else {}
    memory = memory_in_fresh_processes(args, cases) if args.memory else {}
    for index in range(args.repeats):
        for case, model in models.items():
            name, n, _ = case
            steps, warmup = args.steps, args.warmup
            if name == "keras_hub_mixtral" and n > args.peer_max_repeats_experts:
                if index > 0:
                    continue
                steps, warmup = 2, 1
            passes[case]["train_ms"].append(
                median_ms(lambda: model.train_on_batch(x, x), steps, warmup))
            passes[case]["predict_ms"].append(
                median_ms(lambda: model.predict_on_batch(x), steps, warmup))
            if case in floors:
                update, read = floors[case]
                passes[case]["sgd_update_ms"].append(median_ms(update, steps, warmup))
                passes[case]["weights_read_ms"].append(median_ms(read, steps, warmup))
            print(f"pass {index}: {name:18s} n={n:<4d} k={case[2]} "
                  f"train {passes[case]['train_ms'][-1]:9.1f} ms  "
                  f"predict {passes[case]['predict_ms'][-1]:9.1f} ms", flush=True)
    rows = []
    for case in cases:
        name, n, k = case
        rows.append({"model": name, "n": n, "k": k, **passes[case],
                     "predict_peak_rss_mb": memory.get(case),
                     "jit_compile": bool(models[case].jit_compile),
                     "train_max_load_ratio": max_load_ratio(models[case]),
                     "params": int(models[case].count_params())})
    return rows


def main(argv=None):
    args = parse_args(argv)
    import keras

    if args.memory_case:
        import json

        print(json.dumps({"peak_mb": first_predict_peak_mb(args)}))
        return None

    from pipelines import records

    start = time.perf_counter()
    rows = run(args)
    return records.benchmark_record(args, start, rows, keras.backend.backend())


if __name__ == "__main__":
    main()
