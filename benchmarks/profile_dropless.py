"""Where `MoEDense`'s time goes on TensorFlow: the dropless path, piece by
piece, against the equal-active Dense FFN, at inference and in training.

TensorFlow runs MoE layers as plain graphs (no XLA, see
`moe_keras.dispatch.strategy.supports_xla`) over batches of unknown size,
and its dropless engine is the sorted rows: every expert runs its MLP on
exactly its own rows (`moe_keras.dispatch.expert_loop.map_groups`). Each
piece is a `tf.function` over inputs of unknown batch size, like
`predict`'s graph, timed as the median of `--steps` calls after 3 warm-up
calls; `train` times the same piece with the gradients of
`sum(outputs * upstream)` with respect to its float inputs and the
weights it reads (the router's in `route`), as a train step takes them:

* `dense_ffn`: `Dense(hidden * k, relu) -> Dense(features)`;
* `layer`: the whole `MoEDense(features, n, top_k=k, expert_hidden=hidden)`
  call (`train` calls it with `training=True`, which also computes its
  balancing loss; the gradients are those of its outputs);
* `route`: router logits, softmax and top-k (`MoELayer.route`);
* `sort_permute`: the sort by expert, the row plan and the gather of every
  token choice into rows sorted by expert;
* `experts_on_rows`: the experts' MLPs on those rows;
* `mixture`: the whole mixture of routed tokens, from the sort to
  gathering every token's k outputs back and mixing them (its pieces
  overlap: TensorFlow runs independent ops side by side, so they need not
  add up);
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

PIECES = ("dense_ffn", "layer", "route", "sort_permute", "experts_on_rows", "mixture", "plain_matmuls")
MODES = ("predict", "train")


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


def graph(function, inputs, train, variables=()):
    """`function` over `inputs` of unknown batch size as one `tf.function`;
    with `train`, returning the gradients of `sum(outputs * upstream)` with
    respect to the float inputs and `variables` instead of the outputs."""
    import tensorflow as tf

    specs = [tf.TensorSpec([None, *value.shape[1:]], value.dtype) for value in inputs]
    if not train:
        return tf.function(function, input_signature=specs)

    def upstream(output):
        # A fixed upstream gradient that differs element by element.
        return tf.reshape(tf.sin(tf.cast(tf.range(tf.size(output)), output.dtype)), tf.shape(output))

    def gradients(*values):
        floats = [value for value in values if value.dtype.is_floating]
        with tf.GradientTape() as tape:
            tape.watch(floats)
            outputs = [o for o in tf.nest.flatten(function(*values)) if o.dtype.is_floating]
            loss = tf.add_n([tf.reduce_sum(o * upstream(o)) for o in outputs])
        return tape.gradient(loss, floats + list(variables), unconnected_gradients=tf.UnconnectedGradients.ZERO)

    return tf.function(gradients, input_signature=specs)


def pieces(num_experts, args, train):
    """`{piece: (function, inputs)}` for one expert count, on one layer, and
    the busiest expert's load over the mean."""
    import keras
    import tensorflow as tf

    from moe_keras import MoEDense
    from moe_keras.dispatch import dropless
    from moe_keras.dispatch import grouped

    keras.utils.set_random_seed(0)
    n, k, d, h = num_experts, args.topk, args.features, args.hidden
    x = tf.constant(np.random.default_rng(0).normal(size=(args.tokens, d)).astype("float32"))
    layer = MoEDense(d, n, top_k=k, expert_hidden=h)
    layer.build((None, d))
    ffn = keras.Sequential([keras.Input((d,)), keras.layers.Dense(h * k, activation="relu"),
                            keras.layers.Dense(d)])
    experts = [layer.experts[name] for name in sorted(layer.experts)]

    def route(x):
        routed = layer.route(x, training=False)
        return routed.expert_indices, routed.expert_weights

    indices, weights = [tf.constant(v) for v in tf.function(route)(x)]

    def sorted_rows(x, indices):
        choices = dropless.sort_by_expert(indices, n)
        plan = grouped.row_plan(choices, indices, n)
        return choices, plan, grouped.permute(x, plan, k)

    def sort_permute(x, indices):
        return sorted_rows(x, indices)[2]

    def mixture(x, indices, weights):
        choices, plan, rows = sorted_rows(x, indices)
        return grouped.unpermute(layer._run_grouped(rows, plan), plan, weights, choices.valid)

    _, plan, rows = tf.function(sorted_rows)(x, indices)
    group_sizes = tf.constant(plan.group_sizes)
    rows = tf.constant(rows)
    plain_rows = tf.constant(np.random.default_rng(1).normal(size=(args.tokens * k, d)).astype("float32"))
    first, second = (tf.Variable(layer.experts[name][0].numpy()) for name in ("hidden_kernel", "kernel"))
    counts = group_sizes.numpy()
    functions = {
        "dense_ffn": (lambda x: ffn(x), [x], ffn.trainable_variables),
        "layer": (lambda x: layer(x, training=train), [x], layer.trainable_variables),
        "route": (route, [x], [layer.router_kernel]),
        "sort_permute": (sort_permute, [x, indices], []),
        "experts_on_rows": (
            lambda r: layer._run_grouped(r, plan._replace(group_sizes=group_sizes)), [rows], experts),
        "mixture": (mixture, [x, indices, weights], experts),
        "plain_matmuls": (lambda r: tf.matmul(tf.nn.relu(tf.matmul(r, first)), second), [plain_rows],
                          [first, second]),
    }
    compiled = {piece: (graph(f, inputs, train, variables), inputs)
                for piece, (f, inputs, variables) in functions.items()}
    return compiled, float(counts.max() / counts.mean())


def run(args):
    import tensorflow as tf

    cases = {(n, mode): pieces(n, args, mode == "train") for n in args.experts for mode in MODES}
    rows = {case: {piece: [] for piece in PIECES} for case in cases}
    for _ in range(args.repeats):
        for case, (functions, _) in cases.items():
            for piece in PIECES:
                function, inputs = functions[piece]
                # Reading one output back waits for the graph to finish.
                call = lambda: tf.nest.flatten(function(*inputs))[0].numpy()  # noqa: E731
                rows[case][piece].append(median_ms(call, args.steps, warmup=3))
    return [{"n": n, "k": args.topk, "mode": mode, "busiest_over_mean": cases[n, mode][1], **rows[n, mode]}
            for n, mode in cases]


def main(argv=None):
    args = parse_args(argv)
    import keras

    from pipelines import records

    start = time.perf_counter()
    rows = run(args)
    for row in rows:
        print(f"n={row['n']} {row['mode']}: "
              + ", ".join(f"{p} {statistics.median(row[p]):.2f} ms" for p in PIECES))
    return records.benchmark_record(args, start, rows, keras.backend.backend())


if __name__ == "__main__":
    main()
