"""PNG figures of the study (matplotlib, Agg backend, ~100 dpi)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pipelines.fashion_csv import CLASS_NAMES  # noqa: E402
from pipelines.records import save_figure_atomically  # noqa: E402

DPI = 100
LOAD_PREFIX = "moe_load_"


def _save(figure, path: Path, tight: bool = True):
    if tight:
        figure.tight_layout()
    try:
        save_figure_atomically(figure, path, dpi=DPI)
    finally:
        # A figure left open after a failed write would pile up in pyplot.
        plt.close(figure)


def ranked_loads(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch expert loads sorted busiest first, as `rank_1`, `rank_2`, ...

    Expert indices mean nothing across seeds (which expert wins is random),
    so loads are compared by rank before averaging over seeds.
    """
    columns = sorted((c for c in epochs.columns if c.startswith(LOAD_PREFIX)), key=lambda c: int(c.split("_")[-1]))
    ranked = -np.sort(-epochs[columns].to_numpy(), axis=1)
    names = [f"rank_{i + 1}" for i in range(len(columns))]
    return pd.concat([epochs[["config", "seed", "epoch"]].reset_index(drop=True),
                      pd.DataFrame(ranked, columns=names)], axis=1)


def load_over_epochs(epochs: pd.DataFrame, path: Path):
    """One panel per config: share of inputs of the busiest ... least-used expert."""
    ranked = ranked_loads(epochs)
    configs = list(dict.fromkeys(ranked["config"]))
    ranks = [c for c in ranked.columns if c.startswith("rank_")]
    columns = min(3, len(configs))
    rows = -(-len(configs) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows + 0.4), sharey=True,
                                squeeze=False)
    for axis, config in zip(axes.flat, configs):
        grouped = ranked[ranked["config"] == config].groupby("epoch")[ranks]
        mean, std = grouped.mean(), grouped.std().fillna(0.0)
        for index, rank in enumerate(ranks):
            label = "busiest expert" if index == 0 else ("least-used expert" if index == len(ranks) - 1
                                                         else f"expert ranked {index + 1}")
            axis.plot(mean.index, 100 * mean[rank], marker="o", label=label)
            axis.fill_between(mean.index, 100 * (mean[rank] - std[rank]), 100 * (mean[rank] + std[rank]), alpha=0.2)
        axis.axhline(100 / len(ranks), color="grey", linestyle="--", label="perfect balance")
        axis.set_title(f"Switch loss {config}")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    for axis in axes[:, 0]:
        axis.set_ylabel("share of training inputs (%)")
    axes[0][0].legend(fontsize=8)
    figure.suptitle("Expert load per epoch, MoE n=3 k=1 (mean ± std over seeds)")
    _save(figure, path)


def entropy_over_epochs(epochs: pd.DataFrame, max_entropy: float, path: Path):
    """Routing entropy (nats) per epoch, one line per config, ±1 std band."""
    figure, axis = plt.subplots(figsize=(7, 4.4))
    for index, config in enumerate(dict.fromkeys(epochs["config"])):
        grouped = epochs[epochs["config"] == config].groupby("epoch")["moe_entropy"]
        mean, std = grouped.mean(), grouped.std().fillna(0.0)
        style = "--" if "std." in config else "-"
        axis.plot(mean.index, mean, marker="o", linestyle=style, color=plt.cm.tab10(index % 3),
                  label=f"Switch {config}")
        axis.fill_between(mean.index, mean - std, mean + std, alpha=0.2)
    axis.axhline(max_entropy, color="grey", linestyle="--", label=f"maximum ln 3 = {max_entropy:.3f}")
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("entropy of expert load (nats)")
    axis.set_title("Routing entropy per epoch, MoE n=3 k=1")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    _save(figure, path)


def balancing_bars(summary: pd.DataFrame, max_entropy: float, path: Path):
    """Three panels per method: final entropy, max load ratio, test accuracy."""
    panels = (
        ("final_entropy", "entropy of expert load (nats)", max_entropy, 1.0),
        ("final_max_load_ratio", "max load / ideal load (1 = balanced)", 1.0, 1.0),
        ("test_accuracy", "test accuracy (%)", None, 100.0),
    )
    figure, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    positions = np.arange(len(summary))
    for axis, (column, label, reference, scale) in zip(axes, panels):
        axis.bar(positions, scale * summary[f"{column}_mean"], yerr=scale * summary[f"{column}_std"],
                 capsize=3, color="tab:blue", alpha=0.8)
        if reference is not None:
            axis.axhline(reference, color="grey", linestyle="--", label="perfect balance")
            axis.set_ylim(top=max(axis.get_ylim()[1], 1.08 * reference))
            axis.legend(fontsize=8, loc="upper left")
        axis.set_xticks(positions, summary["config"], rotation=30, ha="right")
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
    # One seed has no spread (NaN); the limits only need a number.
    spread = summary["test_accuracy_std"].fillna(0.0)
    low = 100 * (summary["test_accuracy_mean"] - spread).min()
    axes[2].set_ylim(max(0.0, low - 2), 100 * (summary["test_accuracy_mean"] + spread).max() + 1)
    figure.suptitle("Balancing methods on MoE n=3 k=1 (last epoch routing; mean ± std over seeds)")
    _save(figure, path)


def _baseline_band(axis, summary):
    """Baseline mean as a line with a ±1 std band, if the summary has it."""
    base = summary[summary["model"] == "baseline"]
    if base.empty:
        return
    mean, std = 100 * base["test_accuracy_mean"].iloc[0], 100 * base["test_accuracy_std"].iloc[0]
    axis.axhline(mean, color="black", linestyle="--", label=f"dense baseline {mean:.2f}%")
    axis.axhspan(mean - std, mean + std, color="grey", alpha=0.2)


def accuracy_vs_experts(summary: pd.DataFrame, path: Path):
    """Test accuracy against n, one line per k, baseline band."""
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    moe = summary[summary["model"] == "moe"]
    for k, group in moe.groupby("top_k", sort=False):
        label = f"MoE k={int(k)}"
        axis.errorbar(group["num_experts"], 100 * group["test_accuracy_mean"], yerr=100 * group["test_accuracy_std"],
                      marker="o", capsize=4, label=label)
    _baseline_band(axis, summary)
    axis.set_xscale("log", base=2)
    axis.set_xticks(sorted(moe["num_experts"].unique()), [str(int(n)) for n in sorted(moe["num_experts"].unique())])
    axis.set_xlabel("number of experts n")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title("Accuracy vs number of experts (mean ± std over seeds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    _save(figure, path)


def accuracy_vs_params(summary: pd.DataFrame, path: Path):
    """Test accuracy against total and against active parameters per input."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, column, title in ((axes[0], "params_total", "total parameters"),
                                (axes[1], "params_active", "active parameters per input")):
        for (model, k), group in summary.groupby(["model", "top_k"], sort=False):
            label = "dense baseline" if model == "baseline" else f"MoE k={int(k)}"
            axis.errorbar(group[f"{column}_mean"] / 1e3, 100 * group["test_accuracy_mean"],
                          yerr=100 * group["test_accuracy_std"], marker="o", capsize=4, linestyle="-", label=label)
            if model == "moe":
                for _, row in group.iterrows():
                    axis.annotate(f"n={int(row['num_experts'])}", (row[f"{column}_mean"] / 1e3,
                                  100 * row["test_accuracy_mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set_xlabel(f"{title} (thousands)")
        axis.set_title(f"Accuracy vs {title}")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8)
    _save(figure, path)


def accuracy_by_dataset(summary: pd.DataFrame, path: Path):
    """Grouped bars: test accuracy per dataset and model."""
    datasets = list(dict.fromkeys(summary["dataset"]))
    configs = list(dict.fromkeys(summary["config"]))
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        rows = summary[summary["dataset"] == dataset].set_index("config").reindex(configs)
        mean, std = 100 * rows["test_accuracy_mean"], 100 * rows["test_accuracy_std"]
        axis.bar(np.arange(len(configs)), mean, yerr=std, capsize=4, width=0.6,
                 color=plt.cm.tab10(np.arange(len(configs))))
        axis.set_xticks(np.arange(len(configs)), configs)
        axis.set_ylim(max(0.0, (mean - std).min() - 3), min(100.0, (mean + std).max() + 1.5))
        axis.set_title(dataset)
        axis.set_ylabel("test accuracy (%)")
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("Dense baseline vs MoE per dataset (mean ± std over seeds)")
    _save(figure, path)


def routing_heatmaps(matrices: dict, dataset: str, path: Path):
    """Class x expert heatmaps: each expert's share of a class's expert slots
    (k per test input, so for k=1 the share of the class's inputs)."""
    figure, axes = plt.subplots(1, len(matrices), figsize=(3 + 0.7 * sum(m.shape[1] for m in matrices.values()), 4.6),
                                squeeze=False, gridspec_kw={"width_ratios": [m.shape[1] for m in matrices.values()]})
    for axis, (label, counts) in zip(axes[0], matrices.items()):
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = axis.imshow(100 * shares, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for (row, col), value in np.ndenumerate(shares):
            axis.text(col, row, f"{100 * value:.0f}", ha="center", va="center", fontsize=7,
                      color="white" if value < 0.6 else "black")
        axis.set_xticks(range(counts.shape[1]))
        axis.set_yticks(range(counts.shape[0]))
        axis.set_xlabel("expert")
        axis.set_ylabel("class")
        axis.set_title(f"MoE {label}")
    figure.colorbar(image, ax=axes[0].tolist(), label="% of the class's expert slots (k per test input)")
    figure.suptitle(f"Which expert each class is routed to ({dataset} test set)")
    # tight_layout cannot place a colour bar shared by several panels.
    _save(figure, path, tight=False)


FAMILY_STYLE = {"dense": ("black", "o", "--"), "dense-wide": (None, "s", ":"), "moe": (None, "^", "-")}


def accuracy_vs_data_size(summary: pd.DataFrame, path: Path):
    """Test accuracy against training-set size (Fashion-MNIST), one panel per
    architecture, one line per model, mean ± std over seeds."""
    fashion = summary[summary["dataset"] == "fashion"]
    archs = list(dict.fromkeys(fashion["arch"]))
    figure, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 4.4), squeeze=False)
    for axis, arch in zip(axes[0], archs):
        rows = fashion[fashion["arch"] == arch]
        for index, (config, group) in enumerate(rows.groupby("config", sort=False)):
            group = group.sort_values("train_size")
            color, marker, style = FAMILY_STYLE.get(group["family"].iloc[0], (None, "o", "-"))
            axis.errorbar(group["train_size"], 100 * group["test_accuracy_mean"],
                          yerr=100 * group["test_accuracy_std"].fillna(0.0), marker=marker, linestyle=style,
                          color=color or plt.cm.tab10(index % 10), capsize=3, label=config)
        axis.set_xscale("log")
        axis.set_xlabel("training images (Fashion-MNIST, log scale)")
        axis.set_ylabel("test accuracy, whole test set (%)")
        axis.set_title(f"{arch.upper()}: accuracy vs data size")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    _save(figure, path)


def gap_vs_data_size(frame: pd.DataFrame, path: Path):
    """MoE minus its architecture's dense baseline (percentage points), per
    data size, mean ± std over seeds (seed s paired with seed s)."""
    fashion = frame[frame["dataset"] == "fashion"]
    figure, axis = plt.subplots(figsize=(7, 4.4))
    for arch, rows in fashion.groupby("arch", sort=False):
        dense = rows[rows["family"] == "dense"].set_index(["train_size", "seed"])["test_accuracy"]
        for config, group in rows[rows["family"] != "dense"].groupby("config", sort=False):
            gap = 100 * (group.set_index(["train_size", "seed"])["test_accuracy"] - dense).dropna()
            stats = gap.groupby(level="train_size").agg(["mean", "std"]).fillna(0.0)
            if stats.empty:
                continue
            style = ":" if group["family"].iloc[0] == "dense-wide" else "-"
            axis.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, linestyle=style,
                          label=f"{arch}: {config}")
    axis.axhline(0.0, color="black", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlabel("training images (Fashion-MNIST, log scale)")
    axis.set_ylabel("accuracy minus the dense baseline (pp)")
    axis.set_title("Gap to the dense baseline vs data size\n(mean ± std over seeds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    _save(figure, path)


def accuracy_and_time_vs_experts(frame: pd.DataFrame, path: Path):
    """Two panels against n: test accuracy and train step time, per k."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    moe = frame[frame["model"] == "moe"]
    base = frame[frame["model"] == "baseline"]
    for column, axis, label, scale in (("test_accuracy", axes[0], "test accuracy (%)", 100.0),
                                       ("step_ms", axes[1], "epoch time per training step (ms)", 1.0)):
        for k, group in moe.groupby("top_k", sort=False):
            stats = group.groupby("num_experts")[column].agg(["mean", "std"]).fillna(0.0)
            axis.errorbar(stats.index, scale * stats["mean"], yerr=scale * stats["std"], marker="o", capsize=3,
                          label=f"MoE k={int(k)}")
        if not base.empty:
            axis.axhline(scale * base[column].mean(), color="black", linestyle="--", label="dense baseline")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("number of experts n")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("Many experts on the full training set (mean ± std over seeds)")
    _save(figure, path)


def conv_routing_figure(runs: pd.DataFrame, dataset: str, path: Path):
    """Per conv-expert model (one seed): the class x expert shares, and for
    pixel routing each expert's share of the images at each position."""
    panels = []
    for row in runs.itertuples():
        panels.append((f"{row.config}: class x expert", np.asarray(row.class_expert_counts, dtype=float), "class"))
        maps = getattr(row, "expert_maps", None)
        if isinstance(maps, list):
            maps = np.asarray(maps, dtype=float)
            for expert in range(maps.shape[-1]):
                panels.append((f"pixel routing: expert {expert}", maps[..., expert], "map"))
    columns = min(4, max(1, len(panels)))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.axis("off")
    for axis, (title, values, kind) in zip(axes.flat, panels):
        if kind == "class":
            shares = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
            axis.imshow(100 * shares, cmap="viridis", vmin=0, vmax=100, aspect="auto")
            axis.set_xlabel("expert")
            axis.set_ylabel("class")
            axis.set_xticks(range(shares.shape[1]))
            if dataset == "fashion" and len(shares) == len(CLASS_NAMES):
                axis.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=7)
        else:
            image = axis.imshow(100 * values, cmap="magma", vmin=0, vmax=100)
            axis.set_xticks([])
            axis.set_yticks([])
            figure.colorbar(image, ax=axis, fraction=0.046, label="% of images")
        axis.set_title(title, fontsize=8)
    figure.suptitle(f"What the conv experts specialise in ({dataset} test set, seed 0)")
    _save(figure, path)
