"""The experiments: which configurations each one trains and what it writes.

Each experiment function takes a `Context` and writes into `context.out`:
`<name>.csv` (one row per config and seed: every number measured),
`<name>_summary.csv` (mean/std over seeds) and its PNG figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy.stats import entropy
from sklearn.metrics import mutual_info_score

from moe_keras import routing_counts
from pipelines.experiments import datasets as datasets_lib
from pipelines.experiments import plots
from pipelines.experiments.runner import TrainSettings, aggregate, baseline_config, moe_config, run_configs

SUMMARY_VALUES = (
    "test_accuracy", "val_accuracy", "train_accuracy", "best_epoch", "epochs_run",
    "epoch_seconds", "params_total", "params_active",
    "final_entropy", "final_max_load_ratio", "final_dead_experts",
    "best_entropy", "best_max_load_ratio",
)
QUICK_SIZES = (300, 100)  # train / test samples of a --quick run


@dataclass
class Context:
    """What every experiment needs: where to write, seeds, data, settings."""

    out: Path
    runs: Path
    seeds: list
    settings: TrainSettings
    dataset: str = "digits"
    idx_dir: Path = datasets_lib.DEFAULT_FASHION_DIR
    cifar_dir: Path = datasets_lib.DEFAULT_CIFAR_DIR
    subset: tuple = (10_000, 2_000)  # train / test of the larger datasets
    quick: bool = False
    log: Callable[[str], None] = field(default=print)

    def load(self, name=None):
        """The named dataset (default `self.dataset`), shrunk under --quick."""
        train_size, test_size = QUICK_SIZES if self.quick else self.subset
        dataset = datasets_lib.load(
            name or self.dataset, self.runs / "cache", self.idx_dir, self.cifar_dir, train_size, test_size
        )
        if self.quick:
            dataset = datasets_lib.shrink(dataset, *QUICK_SIZES)
        self.log(f"dataset: {dataset.description}")
        return dataset


def _write(context, name, frame, by):
    """Writes the per-seed table and its summary; returns the summary."""
    context.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(context.out / f"{name}.csv", index=False)
    summary = aggregate(frame, by, SUMMARY_VALUES)
    summary.to_csv(context.out / f"{name}_summary.csv", index=False)
    context.log(f"wrote {context.out / (name + '.csv')} and {name}_summary.csv")
    return summary


def _collect_histories(store):
    """An `on_run` hook that keeps each run's per-epoch logs in `store`."""

    def on_run(config, seed, row, history, model, validation):
        store.append(history.assign(config=config.label, seed=seed))

    return on_run


# collapse ------------------------------------------------------------------

COLLAPSE_ALPHAS = (0.0, 0.01, 0.1)
COLLAPSE_INPUTS = ("raw", "standardized")


def collapse(context: Context):
    """MoE(n=3, k=1) under Switch weights 0, 0.01, 0.1: load and entropy per epoch.

    Each alpha runs on raw pixels in [0, 1] and on standardised pixels
    (torchvision's MNIST normalisation, as PyTorch studies use): the router
    is linear in its input, so the input's offset decides how alike its
    first decisions are. Runs a fixed number of epochs (best weights still
    restored for the test number) so that the curves of all seeds line up.
    """
    settings = TrainSettings(**{**vars(context.settings), "patience": context.settings.epochs})
    alphas = COLLAPSE_ALPHAS[::2] if context.quick else COLLAPSE_ALPHAS
    configs = [
        moe_config(f"alpha={alpha:g}" + ("" if inputs == "raw" else ", std. inputs"), 3, 1,
                   {"switch_loss_weight": alpha}, standardize=inputs != "raw", alpha=alpha, inputs=inputs)
        for inputs in COLLAPSE_INPUTS
        for alpha in alphas
    ]
    histories = []
    frame = run_configs(configs, context.load(), context.seeds, settings, context.log,
                        _collect_histories(histories))
    epochs = pd.concat(histories, ignore_index=True)
    context.out.mkdir(parents=True, exist_ok=True)
    epochs.to_csv(context.out / "collapse_epochs.csv", index=False)
    summary = _write(context, "collapse", frame, ["config", "inputs", "alpha"])
    plots.load_over_epochs(epochs, context.out / "collapse_load.png")
    plots.entropy_over_epochs(epochs, math.log(3), context.out / "collapse_entropy.png")
    return summary


# gating --------------------------------------------------------------------


def gating(context: Context):
    """Does the k=1 gate drive the collapse? MoE(3, 1), Switch 0.01, raw inputs.

    With the Switch gate the output is `p * E(x)`, so the task loss itself
    pushes the router to raise the probability of the expert that already
    does the work (rich get richer). With `normalize_top_k=True` the single
    gate is 1: the task loss gives the router no gradient and only the
    balancing loss trains it.
    """
    settings = TrainSettings(**{**vars(context.settings), "patience": context.settings.epochs})
    configs = [
        moe_config("gate=p (Switch)", 3, 1, {"switch_loss_weight": 0.01}, gate="p"),
        moe_config("gate=1 (renormalised)", 3, 1, {"switch_loss_weight": 0.01, "normalize_top_k": True}, gate="1"),
    ]
    histories = []
    frame = run_configs(configs, context.load(), context.seeds, settings, context.log,
                        _collect_histories(histories))
    context.out.mkdir(parents=True, exist_ok=True)
    pd.concat(histories, ignore_index=True).to_csv(context.out / "gating_epochs.csv", index=False)
    summary = _write(context, "gating", frame, ["config", "gate"])
    plots.entropy_over_epochs(pd.concat(histories, ignore_index=True), math.log(3),
                              context.out / "gating_entropy.png")
    return summary


# balancing -----------------------------------------------------------------

# Coefficients chosen so each term spans about the same range between a
# balanced and a fully collapsed router with n=3: the Switch loss goes 1 -> 3
# (span 2) at 0.01, importance CV^2 0 -> 2 at 0.01, diversity 0 -> 1 at 0.02,
# overflow (capacity 1.25) 0 -> 1.75 at 0.01. The z-loss does not balance; it
# is run at ST-MoE's 0.001 to show what it does alone. Loss-free bias uses
# DeepSeek-V3's rate 0.001 with no auxiliary loss.
BALANCING_METHODS = (
    ("none", {"switch_loss_weight": 0.0}),
    ("switch", {"switch_loss_weight": 0.01}),
    ("importance", {"switch_loss_weight": 0.0, "importance_loss_weight": 0.01}),
    ("diversity", {"switch_loss_weight": 0.0, "diversity_loss_weight": 0.02}),
    ("overflow", {"switch_loss_weight": 0.0, "overflow_loss_weight": 0.01, "capacity_factor": 1.25}),
    ("z-loss", {"switch_loss_weight": 0.0, "z_loss_weight": 0.001}),
    ("loss-free bias", {"switch_loss_weight": 0.0, "bias_update_rate": 0.001}),
)


# A --quick run keeps the methods with their own code paths in the layer:
# capacity dropping and the bias state.
QUICK_BALANCING = ("none", "overflow", "loss-free bias")


def balancing(context: Context):
    """Every balancing method on MoE(n=3, k=1): entropy, max load, accuracy, time."""
    methods = [m for m in BALANCING_METHODS if not context.quick or m[0] in QUICK_BALANCING]
    configs = [moe_config(name, 3, 1, routing, method=name) for name, routing in methods]
    frame = run_configs(configs, context.load(), context.seeds, context.settings, context.log)
    summary = _write(context, "balancing", frame, ["config"])
    plots.balancing_bars(summary, math.log(3), context.out / "balancing.png")
    return summary


# experts -------------------------------------------------------------------

EXPERT_COUNTS = (2, 3, 4, 8)
TOP_KS = (1, 2)


def experts(context: Context):
    """Number of experts x top-k against the dense baseline (Switch 0.01)."""
    counts = EXPERT_COUNTS[:1] if context.quick else EXPERT_COUNTS
    configs = [baseline_config(num_experts=0, top_k=0)]
    configs += [moe_config(f"n={n} k={k}", n, k) for k in TOP_KS for n in counts]
    frame = run_configs(configs, context.load(), context.seeds, context.settings, context.log)
    summary = _write(context, "experts", frame, ["config", "model", "num_experts", "top_k"])
    plots.accuracy_vs_experts(summary, context.out / "experts_accuracy.png")
    plots.accuracy_vs_params(summary, context.out / "experts_params.png")
    return summary


# datasets ------------------------------------------------------------------


def datasets(context: Context):
    """Baseline, MoE(3,1) and MoE(3,2) on every dataset that is available."""
    configs = [
        baseline_config(num_experts=0, top_k=0),
        moe_config("n=3 k=1", 3, 1),
        moe_config("n=3 k=2", 3, 2),
    ]
    if context.quick:
        configs = configs[:2]
    frames, notes = [], []
    for name in datasets_lib.DATASET_NAMES:
        try:
            dataset = context.load(name)
        except datasets_lib.DatasetUnavailable as error:
            context.log(str(error))
            notes.append(str(error))
            continue
        notes.append(f"{name}: {dataset.description}")
        frames.append(run_configs(configs, dataset, context.seeds, context.settings, context.log))
    context.out.mkdir(parents=True, exist_ok=True)
    (context.out / "datasets_notes.txt").write_text("\n".join(notes) + "\n")
    summary = _write(context, "datasets", pd.concat(frames, ignore_index=True), ["dataset", "config"])
    plots.accuracy_by_dataset(summary, context.out / "datasets.png")
    return summary


# specialisation --------------------------------------------------------------

# (label, n, k, routing): the default k=1 layer (which collapses on raw
# pixels), a k=1 layer with the stronger Switch weight that keeps two or
# three experts alive, and k=2 over 8 experts.
SPECIALISATION_MODELS = (
    ("n=3 k=1", 3, 1, {}),
    ("n=3 k=1 alpha=0.1", 3, 1, {"switch_loss_weight": 0.1}),
    ("n=8 k=2", 8, 2, {}),
)


def specialisation(context: Context):
    """Class x expert routing of trained MoE models on the test set.

    Also reports the normalised mutual information between class and expert
    (0: routing ignores the class, 1: the class determines the expert).
    """
    dataset = context.load()
    chosen = SPECIALISATION_MODELS[:1] if context.quick else SPECIALISATION_MODELS
    configs = [moe_config(label, n, k, routing) for label, n, k, routing in chosen]
    matrices = {}

    def on_run(config, seed, row, history, model, validation):
        counts = routing_counts(model, dataset.x_test, dataset.y_test, num_classes=10)
        matrices[config.label] = counts
        # `row` is the dict that goes into the table, so this adds a column.
        row["class_expert_nmi"] = normalised_mutual_information(counts)

    frame = run_configs(configs, dataset, context.seeds[:1], context.settings, context.log, on_run)
    context.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(context.out / "specialisation.csv", index=False)
    tables = [
        pd.DataFrame(m, columns=[f"expert_{i}" for i in range(m.shape[1])]).assign(config=label).rename_axis("digit")
        .reset_index()
        for label, m in matrices.items()
    ]
    pd.concat(tables, ignore_index=True).to_csv(context.out / "specialisation_counts.csv", index=False)
    plots.routing_heatmaps(matrices, dataset.name, context.out / "specialisation.png")
    return frame


def normalised_mutual_information(counts) -> float:
    """I(class; expert) / H(expert) of a class x expert count matrix, in nats.

    Divided by the expert entropy alone (none of sklearn's
    `normalized_mutual_info_score` averages): 1 means the class fixes the
    expert, whatever the number of classes.
    """
    counts = np.asarray(counts, dtype=np.float64)
    mutual = mutual_info_score(None, None, contingency=counts)
    expert_entropy = entropy(counts.sum(axis=0))
    # One expert for everything: H = 0 up to rounding, and no information.
    return float(mutual / expert_entropy) if expert_entropy > 1e-9 else 0.0


EXPERIMENTS = {
    "collapse": collapse,
    "balancing": balancing,
    "experts": experts,
    "datasets": datasets,
    "specialisation": specialisation,
    "gating": gating,
}
