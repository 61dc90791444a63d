"""Sparse upcycling: turn a trained dense ViT into an MoE and train on.

Sparse upcycling (Komatsuzaki et al. 2022) starts an MoE from a trained
dense checkpoint instead of from scratch: every expert of a new MoE block is
a copy of the dense feed-forward block it replaces, so the upcycled model
computes exactly what the dense one did, and further training only has to
move the experts apart.

This script uses the ViT of `vit_moe.py` on Fashion-MNIST:

1. train the dense ViT for `--dense-epochs`;
2. branch A trains that dense model on for `--more-epochs`;
3. branch B upcycles the feed-forward pairs of blocks 1 and 3
   (`Dense(128, gelu) -> Dense(64)`) with `moe_keras.upcycle` into
   `MoEDense` blocks of 4 experts, top-1, and trains on for the same
   `--more-epochs`.

With top-1 each token runs one expert of the dense block's size, so both
branches spend the same compute per token: the comparison is the one the
paper makes, upcycling against dense continuation at equal compute. (With
`top_k=1` the single weight is renormalised to 1, which keeps the output
exact at creation; the router then learns from the Switch balancing loss.)
Both branches are scored on the 10,000 test images; one JSON record per
seed and branch goes to `--out`.

    python examples/upcycle_vit.py            # 3 seeds, minutes on 2 CPU cores
    python examples/upcycle_vit.py --quick    # seconds
"""

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import vit_moe  # noqa: E402

import moe_keras  # noqa: E402
from pipelines import arguments  # noqa: E402
from pipelines import records  # noqa: E402

PREFIX = "upcycle_vit"
FULL = dict(vit_moe.FULL, dense_epochs=2, more_epochs=2, upcycle_experts=4, upcycle_top_k=1)
QUICK = dict(vit_moe.QUICK, dense_epochs=1, more_epochs=1, upcycle_experts=4, upcycle_top_k=1)


def compile_model(model, config, epochs, train_size):
    steps = epochs * int(np.ceil(train_size / config["batch_size"]))
    schedule = keras.optimizers.schedules.CosineDecay(config["learning_rate"], decay_steps=steps)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config["weight_decay"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])


def pairs(config):
    """The dense feed-forward pairs that `vit_moe.py` makes MoE blocks of."""
    return [(f"block{i}_ffn_hidden", f"block{i}_ffn_out") for i in vit_moe.moe_blocks(config)]


def run_seed(config, seed, data, quick):
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    dense = vit_moe.build_vit(config, moe=False)
    compile_model(dense, config, config["dense_epochs"], len(y_train))
    dense.fit(x_train, y_train, epochs=config["dense_epochs"], batch_size=config["batch_size"],
              verbose=0 if quick else 2)
    start_accuracy = dense.evaluate(x_test, y_test, batch_size=256, verbose=0)[1]
    upcycled = moe_keras.upcycle(dense, pairs(config), num_experts=config["upcycle_experts"],
                                 top_k=config["upcycle_top_k"], switch_loss_weight=config["switch_loss_weight"])
    # At creation the upcycled model predicts what the dense one does.
    gap = float(np.abs(upcycled.predict(x_test[:256], verbose=0) - dense.predict(x_test[:256], verbose=0)).max())
    results = {}
    for branch, model in (("dense_continued", dense), ("upcycled", upcycled)):
        keras.utils.set_random_seed(seed + 1000)
        compile_model(model, config, config["more_epochs"], len(y_train))
        start = time.perf_counter()
        model.fit(x_train, y_train, epochs=config["more_epochs"], batch_size=config["batch_size"],
                  verbose=0 if quick else 2)
        fit_s = time.perf_counter() - start
        loss, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
        results[branch] = {"test_accuracy": float(accuracy), "test_loss": float(loss), "fit_s": fit_s,
                           "params": int(model.count_params())}
    return float(start_accuracy), gap, results


def summary_table(out, quick=False):
    """The README table, rebuilt from the records in `out`."""
    import json
    import statistics

    runs = [json.loads(p.read_text()) for p in sorted(Path(out).glob(f"{PREFIX}-s*.json"))]
    runs = [r for r in runs if r["quick"] == quick]
    if not runs:
        raise SystemExit(f"upcycle_vit.py: no {'quick ' if quick else ''}records in {out}")

    def spread(values, digits=2):
        return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"

    config = runs[0]["config"]
    rows = [["dense, after the first epochs", len(runs),
             spread([100 * r["metrics"]["dense_start_accuracy"] for r in runs]), "-", "-"]]
    for branch, label in (("dense_continued", "dense, trained on"),
                          ("upcycled", f"upcycled to {config['upcycle_experts']} experts, top-{config['upcycle_top_k']}, trained on")):
        rows.append([label, len(runs), spread([100 * r["metrics"][branch]["test_accuracy"] for r in runs]),
                     f"{runs[0]['metrics'][branch]['params']:,}",
                     spread([r["metrics"][branch]["fit_s"] for r in runs], 0)])
    gaps = max(r["metrics"]["upcycled_gap_at_creation"] for r in runs)
    machine = runs[0]["machine"]
    note = (f"\n\n{config['dense_epochs']} dense epochs, then {config['more_epochs']} more for each branch; "
            f"largest |upcycled - dense| logit at creation over all seeds: {gaps:.1e}; "
            f"{machine['cpu_count']}-core {machine['processor']} CPU, accelerator: {machine['accelerator']}; "
            f"records `{PREFIX}-*.json`.")
    return records.markdown_table(
        ["model", "seeds", "test accuracy %, median (range)", "total params", "fit s of the last epochs"],
        rows) + note


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=vit_moe.DEFAULT_OUT)
    parser.add_argument("--seeds", type=arguments.seed, nargs="+")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=vit_moe.FASHION_DIR)
    args = parser.parse_args(argv)
    if args.table:
        table = summary_table(args.out, args.quick)
        print(table)
        return table
    config = dict(QUICK if args.quick else FULL)
    if args.seeds:
        config["seeds"] = args.seeds
    train, test, source = vit_moe.load_fashion_mnist(config, args.quick, args.data_dir)
    paths = []
    for seed in config["seeds"]:
        started = time.perf_counter()
        start_accuracy, gap, results = run_seed(config, seed, (train, test), args.quick)
        record = {
            "example": PREFIX, "seed": seed, "quick": args.quick,
            "command": "python examples/upcycle_vit.py " + shlex.join(argv), "config": config, "data": source,
            "versions": records.library_versions(), "machine": records.machine_description(),
            "metrics": {"dense_start_accuracy": start_accuracy, "upcycled_gap_at_creation": gap, **results},
            "timings": {"total_s": time.perf_counter() - started},
        }
        path = args.out / f"{PREFIX}-s{seed}{'-quick' if args.quick else ''}.json"
        records.write_json_atomically(path, record)
        paths.append(path)
        print(f"seed {seed}: dense {results['dense_continued']['test_accuracy']:.4f}, "
              f"upcycled {results['upcycled']['test_accuracy']:.4f} -> {path}")
        keras.backend.clear_session()
    print(summary_table(args.out, args.quick))
    return paths


if __name__ == "__main__":
    main()
