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
from moe_keras import routing_maps
from pipelines.experiments import datasets as datasets_lib
from pipelines.experiments import models
from pipelines.experiments import plots
from pipelines.experiments.run_store import RunStore
from pipelines.experiments.runner import Config
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
    # Full-size studies (datasize, experts_scale, conv_experts, and the
    # others on a non-default dataset) keep one record per run here and
    # resume from them; `shard` splits their runs between processes.
    records: Path | None = None
    shard: tuple[int, int] | None = None
    only: tuple[str, ...] = ()
    sizes: tuple = ()
    archs: tuple = ("mlp", "cnn")
    recorded_only: bool = False

    def store(self, experiment: str) -> RunStore | None:
        if self.records is None:
            return None
        return RunStore(self.records, experiment, self.shard, self.recorded_only, self.only)

    @property
    def sharded(self) -> bool:
        """A shard (or `only` some configurations) trains its runs and
        records them; the tables wait for a call that trains them all."""
        return self.shard is not None or bool(self.only)

    @property
    def tag(self) -> str:
        """Suffix of the output files of an experiment run on a dataset other
        than the digits, so that it does not replace the digits' tables."""
        if self.dataset == "digits":
            return ""
        return f"_{self.dataset}{self.subset[0] // 1000}k"

    def dataset_key(self, dataset) -> str:
        return f"{dataset.name}-{len(dataset.y_train)}"

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


class NothingRecorded(RuntimeError):
    """`--recorded-only` found no run of the experiment to tabulate."""


def _require_runs(context, name, frame):
    """Raises `NothingRecorded` when `frame` has no run (`--recorded-only`
    before any run of `name` is recorded)."""
    if frame.empty:
        raise NothingRecorded(f"no run of {name} is recorded under {context.records}; nothing to tabulate.")


# Experiments that keep no run records: a shard, `--only` or
# `--recorded-only` has nothing of theirs to split, pick or read back.
UNRECORDED = ("experts", "datasets", "specialisation")


def _skips_unrecorded(context, name) -> bool:
    """Whether `name` (one of `UNRECORDED`) must train nothing in this call;
    logs why."""
    if context.sharded or context.recorded_only:
        context.log(f"{name} keeps no run records: skipped under --shard, --only and --recorded-only")
        return True
    return False


def _write(context, name, frame, by):
    """Writes the per-seed table and its summary; returns the summary.

    `name` carries the context's `tag` (see `_named`)."""
    _require_runs(context, name, frame)
    context.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(context.out / f"{name}.csv", index=False)
    summary = aggregate(frame, by, SUMMARY_VALUES)
    summary.to_csv(context.out / f"{name}_summary.csv", index=False)
    context.log(f"wrote {context.out / (name + '.csv')} and {name}_summary.csv")
    return summary


def _named(context, name):
    return name + context.tag


def _run(context, experiment, configs, dataset, settings, on_run=None, seeds=None):
    """`run_configs` with the context's run records (if any)."""
    return run_configs(configs, dataset, context.seeds if seeds is None else seeds, settings, context.log,
                       on_run, store=context.store(experiment), dataset_key=context.dataset_key(dataset))


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
    frame = _run(context, "collapse", configs, context.load(), settings, _collect_histories(histories))
    if context.sharded:
        return None
    name = _named(context, "collapse")
    _require_runs(context, name, frame)
    epochs = pd.concat(histories, ignore_index=True)
    context.out.mkdir(parents=True, exist_ok=True)
    epochs.to_csv(context.out / f"{name}_epochs.csv", index=False)
    summary = _write(context, name, frame, ["config", "inputs", "alpha"])
    plots.load_over_epochs(epochs, context.out / f"{name}_load.png")
    plots.entropy_over_epochs(epochs, math.log(3), context.out / f"{name}_entropy.png")
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
    frame = _run(context, "gating", configs, context.load(), settings, _collect_histories(histories))
    if context.sharded:
        return None
    name = _named(context, "gating")
    _require_runs(context, name, frame)
    context.out.mkdir(parents=True, exist_ok=True)
    pd.concat(histories, ignore_index=True).to_csv(context.out / f"{name}_epochs.csv", index=False)
    summary = _write(context, name, frame, ["config", "gate"])
    plots.entropy_over_epochs(pd.concat(histories, ignore_index=True), math.log(3),
                              context.out / f"{name}_entropy.png")
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
    frame = _run(context, "balancing", configs, context.load(), context.settings)
    if context.sharded:
        return None
    name = _named(context, "balancing")
    summary = _write(context, name, frame, ["config"])
    plots.balancing_bars(summary, math.log(3), context.out / f"{name}.png")
    return summary


# experts -------------------------------------------------------------------

EXPERT_COUNTS = (2, 3, 4, 8)
TOP_KS = (1, 2)


def experts(context: Context):
    """Number of experts x top-k against the dense baseline (Switch 0.01)."""
    if _skips_unrecorded(context, "experts"):
        return None
    counts = EXPERT_COUNTS[:1] if context.quick else EXPERT_COUNTS
    configs = [baseline_config(num_experts=0, top_k=0)]
    configs += [moe_config(f"n={n} k={k}", n, k) for k in TOP_KS for n in counts]
    frame = run_configs(configs, context.load(), context.seeds, context.settings, context.log)
    name = _named(context, "experts")
    summary = _write(context, name, frame, ["config", "model", "num_experts", "top_k"])
    plots.accuracy_vs_experts(summary, context.out / f"{name}_accuracy.png")
    plots.accuracy_vs_params(summary, context.out / f"{name}_params.png")
    return summary


# datasets ------------------------------------------------------------------


def datasets(context: Context):
    """Baseline, MoE(3,1) and MoE(3,2) on every dataset that is available."""
    if _skips_unrecorded(context, "datasets"):
        return None
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
    if _skips_unrecorded(context, "specialisation"):
        return None
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
    name = _named(context, "specialisation")
    context.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(context.out / f"{name}.csv", index=False)
    tables = [
        pd.DataFrame(m, columns=[f"expert_{i}" for i in range(m.shape[1])]).assign(config=label).rename_axis("digit")
        .reset_index()
        for label, m in matrices.items()
    ]
    pd.concat(tables, ignore_index=True).to_csv(context.out / f"{name}_counts.csv", index=False)
    plots.routing_heatmaps(matrices, dataset.name, context.out / f"{name}.png")
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


# At scale: data size, many experts, conv experts -------------------------

DATA_SIZES = (1_000, 4_000, 15_000, 60_000)
QUICK_DATA_SIZES = (100, 300)
FULL_SIZE = 60_000

# Sized epochs: each run may take about this many optimizer steps (the
# epochs follow from the training-split size), within the bounds, and stops
# early on validation loss with a patience of an eighth of its epochs.
STEP_BUDGET = {"mlp": 15_000, "cnn": 8_000}
EPOCH_BOUNDS = {"mlp": (15, 150), "cnn": (10, 60)}
PATIENCE_BOUNDS = (3, 10)


def sized_settings(settings, arch: str, train_size: int):
    """The study recipe with epochs and patience sized to `train_size`."""
    fit_rows = train_size * (1 - settings.validation_fraction)
    steps = max(1, math.ceil(fit_rows / settings.batch_size))
    low, high = EPOCH_BOUNDS[arch]
    epochs = min(high, max(low, math.ceil(STEP_BUDGET[arch] / steps)))
    patience = min(PATIENCE_BOUNDS[1], max(PATIENCE_BOUNDS[0], epochs // 8))
    return TrainSettings(**{**vars(settings), "epochs": epochs, "patience": patience})


def _sized(context, arch, train_size):
    """`sized_settings`, or the context's own (one epoch) under --quick."""
    return context.settings if context.quick else sized_settings(context.settings, arch, train_size)


DATASIZE_MOE = ((1, 4), (1, 16), (2, 4), (2, 16))  # (k, n) at the baseline's active size


def datasize_configs(arch: str) -> list:
    """The data-size sweep's models of one architecture."""
    if arch == "mlp":
        configs = [baseline_config(arch="mlp", family="dense", num_experts=0, top_k=0)]
        configs += [moe_config(f"n={n} k={k}", n, k, arch="mlp", family="moe") for k, n in DATASIZE_MOE]
        configs += [
            Config(f"dense, params of n={n}", models.wide_baseline(n),
                   {"model": "wide", "arch": "mlp", "family": "dense-wide", "num_experts": n, "top_k": 0})
            for n in sorted({n for _, n in DATASIZE_MOE})
        ]
        return configs
    k, n = models.CNN_MOE
    return [
        Config("cnn dense head", models.cnn_dense_head(),
               {"model": "baseline", "arch": "cnn", "family": "dense", "num_experts": 0, "top_k": 0}),
        Config(f"cnn MoE({k},{n}) head", models.cnn_moe_head(),
               {"model": "moe", "arch": "cnn", "family": "moe", "num_experts": n, "top_k": k}),
    ]


def _fashion_subsets(context, sizes):
    """Fashion-MNIST subsets (one fixed stratified subset per size, one full
    test set), smallest first; under --quick, of a shrunk set."""
    full = datasets_lib.load_idx(context.idx_dir, None, None)
    if context.quick:
        full = datasets_lib.shrink(full, max(sizes), QUICK_SIZES[1])
    for size in sorted(sizes):
        yield datasets_lib.subset(full, size)


def _datasize_datasets(context):
    """The sweep's Fashion-MNIST subsets, then the 5,000 digits."""
    sizes = context.sizes or (QUICK_DATA_SIZES if context.quick else DATA_SIZES)
    yield from _fashion_subsets(context, sizes)
    yield context.load("digits")


def datasize(context: Context):
    """Does MoE need more data? Dense MLP, MoE k in {1, 2} x n in {4, 16},
    dense MLPs with the MoE's total parameters, and the pipeline's CNN with
    its MoE head against its dense head, on 1k ... 60k Fashion-MNIST images
    and the 5k digits, each with epochs sized to its data."""
    frames = []
    datasets = list(_datasize_datasets(context))
    for arch in context.archs:
        configs = datasize_configs(arch)
        if context.quick:
            configs = configs[:2] if arch == "mlp" else configs
        for dataset in datasets:
            context.log(f"dataset: {dataset.description}")
            settings = _sized(context, arch, len(dataset.y_train))
            frames.append(_run(context, "datasize", configs, dataset, settings))
    if context.sharded:
        return None
    frame = pd.concat(frames, ignore_index=True)
    summary = _write(context, "datasize", frame, ["arch", "family", "config", "dataset", "train_size"])
    plots.accuracy_vs_data_size(summary, context.out / "datasize.png")
    plots.gap_vs_data_size(frame, context.out / "datasize_gap.png")
    return summary


SCALE_EXPERT_COUNTS = (2, 4, 8, 16, 64)


def experts_scale(context: Context):
    """n in {2, 4, 8, 16, 64} x k in {1, 2} on the full training set:
    accuracy and step time against n (sparse dispatch, the layer's default)."""
    counts = SCALE_EXPERT_COUNTS[:2] if context.quick else SCALE_EXPERT_COUNTS
    configs = [baseline_config(num_experts=0, top_k=0)]
    configs += [moe_config(f"n={n} k={k}", n, k) for k in TOP_KS for n in counts if k <= n]
    dataset = _full_fashion(context)
    frame = _run(context, "experts_scale", configs, dataset, _sized(context, "mlp", len(dataset.y_train)))
    if context.sharded:
        return None
    frame["step_ms"] = 1000 * frame["epoch_seconds"] / np.ceil(
        frame["train_size"] * (1 - context.settings.validation_fraction) / context.settings.batch_size)
    summary = _write(context, "experts_scale", frame, ["config", "model", "num_experts", "top_k"])
    plots.accuracy_and_time_vs_experts(frame, context.out / "experts_scale.png")
    return summary


def _full_fashion(context):
    """The data-size sweep's largest set (all 60,000 images), so that a run
    of another experiment on it is the same run as the sweep's."""
    (dataset,) = _fashion_subsets(context, (max(QUICK_DATA_SIZES if context.quick else DATA_SIZES),))
    context.log(f"dataset: {dataset.description}")
    return dataset


CONV_ROUTINGS = ("sample", "pixel")
CONV_EXPERTS = (1, 4)  # (k, n) of the MoEConv2D


def conv_experts(context: Context):
    """`MoEConv2D` (top-1 of 4 conv experts) as the CNN's second block's
    first conv, routed per image or per pixel, against the plain CNN, on the
    full training set; what the experts specialise in."""
    k, n = CONV_EXPERTS
    configs = [Config(f"conv experts, {routing} routing", models.cnn_conv_experts(routing, n, k),
                      {"model": "moe", "routing": routing, "num_experts": n, "top_k": k})
               for routing in CONV_ROUTINGS]
    dataset = _full_fashion(context)
    # The plain CNN on the full set is the data-size sweep's largest dense-head
    # run (same model, data, split and recipe), so it is trained once and
    # recorded under `datasize`, whichever experiment asks for it first.
    baseline = datasize_configs("cnn")[:1]
    settings = _sized(context, "cnn", len(dataset.y_train))
    plain = _run(context, "datasize", baseline, dataset, settings).assign(routing="none")

    def on_run(config, seed, row, history, model, validation):
        if model is None:
            return
        images = dataset.x_test.reshape(-1, 28, 28, 1)
        row["class_expert_counts"] = routing_counts(model, images, dataset.y_test, num_classes=10).tolist()
        row["class_expert_nmi"] = normalised_mutual_information(row["class_expert_counts"])
        if config.columns["routing"] == "pixel":
            row["expert_maps"] = routing_maps(model, images).tolist()

    routed = _run(context, "conv_experts", configs, dataset, settings, on_run)
    if context.sharded:
        return None
    frame = pd.concat([plain, routed], ignore_index=True)
    scalar = frame.drop(columns=[c for c in ("class_expert_counts", "expert_maps") if c in frame.columns])
    summary = _write(context, "conv_experts", scalar, ["config", "routing"])
    first = frame[frame["routing"] != "none"].groupby("config", sort=False).head(1)
    plots.conv_routing_figure(first, dataset.name, context.out / "conv_experts.png")
    return summary


EXPERIMENTS = {
    "collapse": collapse,
    "balancing": balancing,
    "experts": experts,
    "datasets": datasets,
    "specialisation": specialisation,
    "gating": gating,
    "datasize": datasize,
    "experts_scale": experts_scale,
    "conv_experts": conv_experts,
}
