"""PNG plots of one run, drawn from its JSON run record (matplotlib, Agg)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipelines.records import save_figure_atomically  # noqa: E402


def _save(figure, path):
    figure.tight_layout()
    try:
        save_figure_atomically(figure, path, dpi=100)
    finally:
        # A figure left open after a failed write would pile up in pyplot.
        plt.close(figure)


def training_curves(record, path):
    """Loss and accuracy per epoch, train and validation."""
    history = record["history"]
    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        if key in history:
            loss_axis.plot(epochs, history[key], label=label)
    for key, label in (("accuracy", "train"), ("val_accuracy", "validation")):
        if key in history:
            accuracy_axis.plot(epochs, history[key], label=label)
    loss_axis.set(title=f"{record['name']}: loss", xlabel="epoch", ylabel="loss")
    accuracy_axis.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    loss_axis.legend()
    accuracy_axis.legend()
    _save(figure, path)


def expert_load(record, path):
    """Per-expert share of the routed tokens over epochs, one panel per layer."""
    layers = sorted({row["layer"] for row in record["expert_usage"]})
    figure, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4), squeeze=False)
    for axis, layer in zip(axes[0], layers):
        rows = [row for row in record["expert_usage"] if row["layer"] == layer]
        keys = sorted((k for k in rows[0] if k.startswith("load_")), key=lambda k: int(k[5:]))
        epochs = [row["epoch"] + 1 for row in rows]
        for key in keys:
            axis.plot(epochs, [row[key] for row in rows], label=f"expert {key[5:]}")
        axis.axhline(1 / len(keys), color="grey", linestyle=":", label="balanced")
        axis.set(title=f"{layer}: expert load", xlabel="epoch", ylabel="share of token-slots", ylim=(0, 1))
        axis.legend(fontsize="small")
    _save(figure, path)


def class_expert_heatmaps(record, path):
    """Class x expert routing counts on the validation split, per MoE layer."""
    matrices = record["class_expert_counts"]
    figure, axes = plt.subplots(1, len(matrices), figsize=(5 * len(matrices), 4.5), squeeze=False)
    for axis, (layer, counts) in zip(axes[0], matrices.items()):
        counts = np.asarray(counts, dtype=float)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = axis.imshow(shares, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        axis.set(title=f"{layer}: routing by class", xlabel="expert", ylabel="class (digit)")
        axis.set_xticks(range(counts.shape[1]))
        axis.set_yticks(range(counts.shape[0]))
        figure.colorbar(image, ax=axis, label="share of the class's token-slots")
    _save(figure, path)
