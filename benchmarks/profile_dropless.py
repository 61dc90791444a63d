"""Where `MoEDense`'s inference time goes on TensorFlow: the dropless path,
piece by piece, against the equal-active Dense FFN.

TensorFlow runs MoE layers as plain graphs (no XLA, see
`moe_keras.dispatch.strategy.supports_xla`) over batches of unknown size,
so inference takes the `"exact"` engine: one capacity, the busiest
expert's load, and `(n, capacity, d)` buffers. Each piece is a
`tf.function` over an input of unknown batch size, like `predict`'s graph,
timed as the median of `--steps` calls after 3 warm-up calls:

* `dense_ffn`: `Dense(hidden * k, relu) -> Dense(features)`;
* `layer`: the whole `MoEDense(features, n, top_k=k, expert_hidden=hidden)`
  call at inference;
* `route`: router logits, softmax and top-k (`MoELayer.route`);
* `sort_plan_gather`: the sort by expert, the dispatch plan and the gather
  into buffers;
* `experts_on_buffers`: the experts' two batched matmuls on those buffers;
* `combine`: gathering every token's k outputs back and mixing them, timed
  as the whole mixture minus `sort_plan_gather` and `experts_on_buffers`;
* `plain_matmuls`: the same FLOPs as the experts without experts: one
  `relu(rows @ W1) @ W2` over the `T * k` rows.

    KERAS_BACKEND=tensorflow python benchmarks/profile_dropless.py --json benchmarks/results/profile_dropless_cpu_tf.json
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.timing import median_ms  # noqa: E402

PIECES = ("dense_ffn", "layer", "route", "sort_plan_gather", "experts_on_buffers", "mixture", "plain_matmuls")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096, help="T: the peer benchmark's 8 x 512")
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--experts", default="8,64")
    parser.add_argument("--topk", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3, help="passes over every piece")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one pass (smoke test)")
    parser.add_argument("--json", metavar="OUT", help="write the run record here")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.features, args.hidden, args.experts = 64, 8, 12, "4"
        args.steps, args.repeats = 2, 1
    args.experts = [int(v) for v in args.experts.split(",")]
    return args


def pieces(num_experts, args):
    """`{piece: (function, inputs)}` for one expert count, on one layer."""
    import keras
    import tensorflow as tf

    from moe_keras import MoEDense
    from moe_keras.dispatch import capacity as capacity_lib
    from moe_keras.dispatch import dropless

    keras.utils.set_random_seed(0)
    n, k, d, h = num_experts, args.topk, args.features, args.hidden
    x = tf.constant(np.random.default_rng(0).normal(size=(args.tokens, d)).astype("float32"))
    layer = MoEDense(d, n, top_k=k, expert_hidden=h)
    layer.build((None, d))
    ffn = keras.Sequential([keras.Input((d,)), keras.layers.Dense(h * k, activation="relu"),
                            keras.layers.Dense(d)])

    def graph(function, *inputs):
        specs = [tf.TensorSpec([None, *value.shape[1:]], value.dtype) for value in inputs]
        return tf.function(function, input_signature=specs), inputs

    def route(x):
        routed = layer.route(x, training=False)
        return routed.expert_indices, routed.expert_weights

    indices, weights = [tf.constant(v) for v in tf.function(route)(x)]

    def plan(indices):
        choices = dropless.sort_by_expert(indices, n)
        return choices, dropless.sorted_dispatch_plan(choices, indices, n, tf.reduce_max(choices.group_sizes))

    def sort_plan_gather(x, indices):
        return capacity_lib.gather_tokens(x, plan(indices)[1], n)

    def mixture(x, indices, weights):
        choices, dispatch = plan(indices)
        outputs = layer._run_experts(layer.experts, capacity_lib.gather_tokens(x, dispatch, n))
        return capacity_lib.combine_slots(outputs, dispatch, weights, choices.valid)

    buffers = tf.constant(tf.function(sort_plan_gather)(x, indices))
    rows = tf.constant(np.random.default_rng(1).normal(size=(args.tokens * k, d)).astype("float32"))
    first, second = (tf.constant(layer.experts[name][0].numpy()) for name in ("hidden_kernel", "kernel"))
    return {
        "dense_ffn": graph(lambda x: ffn(x), x),
        "layer": graph(lambda x: layer(x, training=False), x),
        "route": graph(route, x),
        "sort_plan_gather": graph(sort_plan_gather, x, indices),
        "experts_on_buffers": graph(lambda b: layer._run_experts(layer.experts, b), buffers),
        "mixture": graph(mixture, x, indices, weights),
        "plain_matmuls": graph(lambda r: tf.matmul(tf.nn.relu(tf.matmul(r, first)), second), rows),
    }, list(buffers.shape)


def run(args):
    import tensorflow as tf

    cases = {n: pieces(n, args) for n in args.experts}
    rows = {n: {piece: [] for piece in PIECES} for n in args.experts}
    for _ in range(args.repeats):
        for n, (functions, _) in cases.items():
            for piece in PIECES:
                function, inputs = functions[piece]
                # Reading one output back waits for the graph to finish.
                call = lambda: tf.nest.flatten(function(*inputs))[0].numpy()  # noqa: E731
                rows[n][piece].append(median_ms(call, args.steps, warmup=3))
    return [{"n": n, "k": args.topk, "buffer_shape": cases[n][1], **rows[n]} for n in args.experts]


def main(argv=None):
    args = parse_args(argv)
    import keras

    from pipelines import records

    start = time.perf_counter()
    rows = run(args)
    for row in rows:
        print(f"n={row['n']}: " + ", ".join(f"{p} {statistics.median(row[p]):.2f} ms" for p in PIECES))
    return records.benchmark_record(args, start, rows, keras.backend.backend())


if __name__ == "__main__":
    main()
