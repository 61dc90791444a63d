"""Epoch times of the pipeline's default model fed by `tf.data` with and
without autotuning, side by side in one process.

    python benchmarks/bench_input_pipeline.py --json benchmarks/results/epoch_stall_cpu.json
    python benchmarks/bench_input_pipeline.py --table benchmarks/results/epoch_stall_cpu.json

One model (`ModelConfig()`, compiled as `pipelines.train.fit` compiles it)
trains on the default data's 90/10 split, one epoch (validation included)
from each input pipeline in turn, the order alternating every round:

* `autotune`: the pipeline's input before the change, shuffled batches with
  `prefetch(tf.data.AUTOTUNE)` and tf.data's default options;
* `pipeline`: `pipelines.train.batches` as it is now (autotuning off, one
  batch prefetched).

Both read the same arrays in the same order. The first round (tracing,
compiling) is not summarised. A stalled epoch is one that took more than
1.5x the `pipeline` input's median epoch.

`--quick` (tests) times 2 rounds on 512 rows.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STALL_FACTOR = 1.5


def autotuned_batches(x, y, batch_size, shuffle_seed):
    """The pipeline's input before autotuning was turned off."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = dataset.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def measure(data_dir, rounds, rows=None, seed=0):
    import keras

    from pipelines import data
    from pipelines.models import ModelConfig
    from pipelines.train import TrainConfig
    from pipelines.train import batches
    from pipelines.train import compiled_model

    images, labels = data.read_train_csv(Path(data_dir) / "train.csv")
    if rows:
        images, labels = images[:rows], labels[:rows]
    x_train, y_train, x_val, y_val = data.train_validation_split(images, labels, 0.1, seed)
    train_config = TrainConfig(seed=seed, verbose=0)
    steps = -(-len(x_train) // train_config.batch_size)
    keras.utils.set_random_seed(seed)
    model = compiled_model(ModelConfig(), train_config, steps)
    size = train_config.batch_size
    inputs = {
        "autotune": (autotuned_batches(x_train, y_train, size, seed), autotuned_batches(x_val, y_val, size, seed)),
        "pipeline": (batches(x_train, y_train, size, shuffle_seed=seed), batches(x_val, y_val, size)),
    }
    seconds = {key: [] for key in inputs}
    order = list(inputs)
    for round_ in range(rounds):
        for key in order if round_ % 2 == 0 else order[::-1]:
            train, validation = inputs[key]
            start = time.perf_counter()
            model.fit(train, validation_data=validation, epochs=1, shuffle=False, verbose=0)
            seconds[key].append(round(time.perf_counter() - start, 3))
    timed = {key: values[1:] for key, values in seconds.items()}
    threshold = STALL_FACTOR * statistics.median(timed["pipeline"])
    return {
        "model": ModelConfig().name,
        "train_rows": int(len(x_train)),
        "validation_rows": int(len(x_val)),
        "batch_size": size,
        "rounds": rounds,
        "epoch_s": seconds,
        "summary": {
            key: {
                "median_s": round(statistics.median(values), 3),
                "min_s": min(values),
                "max_s": max(values),
                "total_s": round(sum(values), 2),
                "stalled_epochs": sum(v > threshold for v in values),
            }
            for key, values in timed.items()
        },
        "stall_threshold_s": round(threshold, 3),
    }


def table(record):
    """The Markdown table of a record (README's `input-pipeline` block)."""
    from pipelines.reports.digit_recognizer import input_pipeline_table

    return input_pipeline_table(record)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "digit-recognizer",
                        help="folder with train.csv (default: the embedded default's)")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--table", type=Path, metavar="RECORD")
    args = parser.parse_args(argv)
    if args.table:
        from pipelines.records import print_record_table

        return print_record_table(args.table, table)
    from pipelines.data import prepare_data_dir
    from pipelines.records import run_record
    from pipelines.records import write_json_atomically

    started = time.perf_counter()
    prepare_data_dir(args.data)
    rounds, rows = (2, 512) if args.quick else (args.rounds, None)
    result = measure(args.data, rounds, rows)
    record = run_record({"rounds": rounds, "rows": rows, "data": str(args.data)}, 0, started, result=result)
    if args.json:
        write_json_atomically(args.json, record)
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
