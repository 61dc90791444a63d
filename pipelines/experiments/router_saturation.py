"""Why MoE(3,5) lost to its dense baseline: the router's softmax saturates.

`python -m pipelines.experiments.router_saturation` trains the pipeline's
CNN models for the first epochs of the pipeline's own recipe
(`pipelines.train.fit` with the pipeline's recipe when it was recorded:
Adam 2e-3, batch 64, the 40-epoch cosine schedule, augmentation, early
stopping) on the embedded
sample and, after every epoch, measures on the validation images:

* the standard deviation of the router logits;
* the mean mixing weights of each token's 1st, 2nd, ... selected expert
  (what the layer really multiplies the experts' outputs by);
* training and validation accuracy.

Models: the equal-active dense baseline (h192), MoE(3,5) h64 with the plain
linear router, with the linear router and a z-loss of 1e-2 (ST-MoE's fix
for large logits), and with the cosine router (the pipeline's default).
Writes a Markdown table (`--out`, default `reports/router_saturation.md`) and
a CSV beside it.
"""

import argparse
import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipelines import records

EPOCH_COLUMNS = ("model", "epoch", "train_accuracy", "validation_accuracy",
                 "logit_std", "mixing_weights")


def _variants():
    # The recorded runs' trunk, the study's (`CNN_TRUNK`).
    from pipelines.experiments.models import CNN_TRUNK as TRUNK
    from pipelines.models import ModelConfig

    return [
        ("dense h192", ModelConfig(moe=None, hidden=192, trunk=TRUNK)),
        ("MoE(3,5) h64, linear router",
         ModelConfig(moe=(3, 5), routing={"router_type": "linear"}, trunk=TRUNK)),
        ("MoE(3,5) h64, linear router + z-loss 1e-2",
         ModelConfig(moe=(3, 5), routing={"router_type": "linear", "z_loss_weight": 1e-2}, trunk=TRUNK)),
        ("MoE(3,5) h64, cosine router (pipeline default)",
         ModelConfig(moe=(3, 5), routing={"router_type": "cosine"}, trunk=TRUNK)),
    ]


def mixing_statistics(layer, features):
    """`(logit_std, mean sorted mixing weights)` of an MoEDense on `features`.

    The weights are the ones the layer mixes its k experts with (after the
    top-k and the renormalisation), averaged over tokens, largest first.
    """
    from keras import ops

    from moe_keras import routing

    logits = layer.router_logits(features)
    probabilities = routing.router_probabilities(logits)
    weights, _ = routing.top_k_routing(
        probabilities, layer.top_k, normalize=layer.normalizes_top_k
    )
    weights = np.sort(ops.convert_to_numpy(weights), axis=-1)[:, ::-1]
    return float(np.std(ops.convert_to_numpy(logits))), weights.mean(axis=0)


def run(epochs, quick=False, log=print):
    """Trains every variant for `epochs` epochs; returns the per-epoch rows."""
    import keras

    from pipelines import data
    from pipelines.train import TrainConfig
    from pipelines.train import fit

    with tempfile.TemporaryDirectory() as directory:
        data.write_embedded_default(directory)
        images, labels = data.read_train_csv(os.path.join(directory, "train.csv"))
    x_train, y_train, x_val, y_val = data.train_validation_split(images, labels, 0.1, 0)
    if quick:
        x_train, y_train, x_val, y_val = x_train[:256], y_train[:256], x_val[:64], y_val[:64]

    rows = []

    class Probe(keras.callbacks.Callback):
        """Stops after `epochs` and measures the router after each epoch."""

        def __init__(self, name):
            super().__init__()
            self.name = name

        def on_epoch_end(self, epoch, logs=None):
            row = {"model": self.name, "epoch": epoch + 1,
                   "train_accuracy": logs["accuracy"],
                   "validation_accuracy": logs["val_accuracy"],
                   "logit_std": None, "mixing_weights": None}
            moe = [layer for layer in self.model.layers if layer.name == "moe"]
            if moe:
                features = keras.Model(self.model.inputs, moe[0].input).predict(
                    x_val, batch_size=512, verbose=0)
                row["logit_std"], row["mixing_weights"] = mixing_statistics(
                    moe[0], features)
            rows.append(row)
            log(format_row(row))
            if epoch + 1 >= epochs:
                self.model.stop_training = True

    # The full run's recipe when it was recorded (the cosine schedule spans
    # its 40 epochs); only the first `epochs` of it are run.
    train_config = TrainConfig(epochs=40, batch_size=64, learning_rate=2e-3, verbose=0)
    for name, model_config in _variants():
        fit(model_config, train_config, x_train, y_train, x_val, y_val,
            callbacks=[Probe(name)])
    return rows


TABLE_HEADER = ("model", "epoch", "train acc %", "val acc %", "router logit std",
                "mean mixing weights (1st / 2nd / 3rd expert)")


def _cells(row):
    weights = row["mixing_weights"]
    mixing = "-" if weights is None else " / ".join(f"{w:.3f}" for w in weights)
    logit_std = "-" if row["logit_std"] is None else f"{row['logit_std']:.2f}"
    return (row["model"], row["epoch"], f"{100 * row['train_accuracy']:.1f}",
            f"{100 * row['validation_accuracy']:.1f}", logit_std, mixing)


def format_row(row):
    """One row of the Markdown table, as the run logs it."""
    return "| " + " | ".join(str(cell) for cell in _cells(row)) + " |"


def write_report(rows, path, command, seconds):
    """Writes the Markdown table and `<stem>.csv` atomically."""
    from pipelines.train import machine_line

    path = Path(path)
    lines = [
        "# Router saturation: MoE(3,5) h64 on the pipeline's CNN",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min on "
        f"{machine_line(records.machine_description())}). "
        "Embedded sample, 3,600 training / "
        "400 validation images, seed 0; statistics on the validation images "
        "after each epoch.",
        "",
        records.markdown_table(TABLE_HEADER, [_cells(row) for row in rows]),
        "",
    ]
    records.write_text_atomically(path, "\n".join(lines))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EPOCH_COLUMNS)
    writer.writeheader()
    for row in rows:
        weights = row["mixing_weights"]
        writer.writerow({**row, "mixing_weights": "" if weights is None
                         else " ".join(f"{w:.4f}" for w in weights)})
    records.write_text_atomically(path.with_suffix(".csv"), buffer.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pipelines.experiments.router_saturation",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per model (default 3)")
    parser.add_argument("--out", type=Path, default=Path("reports/router_saturation.md"))
    parser.add_argument("--quick", action="store_true", help="256 images, for the tests")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    started = time.perf_counter()
    print("| model | epoch | train acc % | val acc % | router logit std | mean mixing weights |")
    rows = run(args.epochs, quick=args.quick)
    command = "python -m pipelines.experiments.router_saturation " + " ".join(
        sys.argv[1:] if argv is None else argv)
    write_report(rows, args.out, command.strip(), time.perf_counter() - started)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
