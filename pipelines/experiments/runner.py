"""Training one configuration under several seeds, and aggregating results.

One run = seeded stratified train/validation split of the training data,
`pipelines.train.fit` with the study's recipe (Adam at a constant rate,
early stopping on validation loss, best weights restored), then a single
evaluation on the held-out test set. Model selection never sees the test
set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import keras
import numpy as np
import pandas as pd

from pipelines import data
from pipelines import train
from pipelines.experiments import models
from pipelines.experiments.datasets import Dataset
from pipelines.models import IMAGE_SHAPE
from pipelines.models import ModelConfig
from pipelines.models import count_parameters
from pipelines.train import TrainConfig

# The study's recipe: constant learning rate, validation loss watched from
# the first epoch. patience >= epochs trains every epoch and still restores
# the best.
STUDY_RECIPE = TrainConfig(
    epochs=15,
    batch_size=64,
    learning_rate=1e-3,
    schedule="constant",
    validation_fraction=0.15,
    patience=3,
    early_stopping_start=0.0,
    verbose=0,
    # One call per step, as every recorded study run trained (their step
    # times are compared across runs).
    steps_per_execution=1,
)


def study_train_config(**overrides) -> TrainConfig:
    """`STUDY_RECIPE` with `overrides` (e.g. `epochs`, `run_eagerly`)."""
    return replace(STUDY_RECIPE, **overrides)


# The name studies.py builds its settings with.
TrainSettings = study_train_config


@dataclass
class Config:
    """One model configuration: a label, its model and columns for the CSV.

    `model.input_shape` is set to the dataset's at training time.
    """

    label: str
    model: ModelConfig
    columns: dict = field(default_factory=dict)
    settings: TrainConfig | None = None  # overrides the experiment's recipe


def baseline_config(**columns) -> Config:
    return Config("baseline", models.baseline(), {"model": "baseline", **columns})


def moe_config(label: str, num_experts: int, top_k: int = 1, routing: dict | None = None,
               standardize: bool = False, **columns) -> Config:
    """A MoE config: `routing` goes to the layer (and the CSV), `columns` only to the CSV."""
    routing = dict(routing or {})
    model = models.moe(num_experts, top_k, standardize, **routing)
    return Config(label, model, {"model": "moe", "num_experts": num_experts, "top_k": top_k, **routing, **columns})


def train_once(config: Config, dataset: Dataset, seed, settings: TrainConfig):
    """Trains one seed of one config with `pipelines.train.fit`.

    `seed` replaces `settings.seed` (an int, a NumPy integer or a string of
    digits).

    Returns:
        `(row, history, model, validation)`: `row` a dict of every number of
        the run, `history` the per-epoch logs (a DataFrame, routing
        statistics included for MoE models), the trained model, and the
        `(x_val, y_val)` split it was selected on.
    """
    settings = replace(config.settings or settings, seed=seed)
    x_train, y_train, x_val, y_val = data.train_validation_split(
        dataset.x_train, dataset.y_train, settings.validation_fraction, seed=settings.seed
    )
    x_test = dataset.x_test
    if config.model.arch == "cnn":
        # The study keeps pixels flat; the CNN takes them as 28 x 28 images.
        x_train, x_val, x_test = (x.reshape(-1, *IMAGE_SHAPE) for x in (x_train, x_val, x_test))
        model_config = replace(config.model, input_shape=IMAGE_SHAPE)
    else:
        model_config = replace(config.model, input_shape=(dataset.features,))
    model, logs, _, epoch_seconds = train.fit(model_config, settings, x_train, y_train, x_val, y_val)
    history = pd.DataFrame(logs)
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    best = int(history["val_loss"].idxmin())
    test_loss, test_accuracy = model.evaluate(x_test, dataset.y_test, verbose=0)
    total, active = count_parameters(model)
    row = {
        "config": config.label,
        **config.columns,
        "dataset": dataset.name,
        "train_size": len(dataset.y_train),
        "seed": settings.seed,
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "val_accuracy": float(history["val_accuracy"][best]),
        "train_accuracy": float(history["accuracy"][best]),
        "best_epoch": best + 1,
        "epochs_run": len(history),
        # The first epoch includes graph tracing; the median of the rest is
        # the steady-state cost.
        "epoch_seconds": float(np.median(epoch_seconds[1:] or epoch_seconds)),
        "max_epochs": settings.epochs,
        "patience": settings.patience,
        "params_total": total,
        "params_active": active,
    }
    row.update(_routing_columns(history, best))
    return row, history, model, (x_val, y_val)


def _routing_columns(history: pd.DataFrame, best: int) -> dict:
    """Routing statistics of the last epoch trained and of the restored (best) one."""
    prefix = models.MOE_LAYER_NAME + "_"
    columns = {}
    for key in [c for c in history.columns if c.startswith(prefix)]:
        name = key[len(prefix):]
        columns[f"final_{name}"] = float(history[key].iloc[-1])
        columns[f"best_{name}"] = float(history[key][best])
    return columns


def run_configs(configs, dataset, seeds, settings, log=print, on_run=None, store=None, dataset_key=None):
    """Trains every config under every seed, printing progress.

    Args:
        on_run: optional `f(config, seed, row, history, model, validation)`
            called after each run (e.g. to keep per-epoch curves). It may
            add entries to `row`, which the run's record keeps. For a run
            read back from its record, `model` and `validation` are `None`.
        store: optional `run_store.RunStore`: a run with a record is read
            back instead of trained, a new run is recorded, and runs that
            another shard owns are skipped (left out of the result).
        dataset_key: the dataset's part of the record names (default
            `dataset.name`), e.g. `fashion-15000` for a subset.

    Returns:
        DataFrame with one row per (config, seed) run (trained or read back).
    """
    rows = []
    total = len(configs) * len(seeds)
    key = dataset_key or dataset.name
    position = -1
    for config in configs:
        for seed in seeds:
            position += 1
            run_settings = replace(config.settings or settings, seed=seed)
            recorded = store.load(config.label, key, seed, run_settings) if store is not None else None
            if recorded is not None:
                row, history = recorded
                rows.append(row)
                if on_run is not None:
                    on_run(config, seed, row, history, None, None)
                continue
            if store is not None and not store.owns(position, config.label):
                continue
            keras.backend.clear_session()
            started = time.perf_counter()
            row, history, model, validation = train_once(config, dataset, seed, settings)
            if on_run is not None:
                on_run(config, seed, row, history, model, validation)
            rows.append(row)
            if store is not None:
                store.save(config.label, key, seed, row, history, config.model,
                           replace(config.settings or settings, seed=seed), started)
            log(
                f"[{position + 1}/{total}] {key} {config.label} seed={seed}: "
                f"test acc {row['test_accuracy']:.4f}, val acc {row['val_accuracy']:.4f}, "
                f"{row['epochs_run']} epochs, {time.perf_counter() - started:.1f}s"
            )
    return pd.DataFrame(rows)


def aggregate(frame: pd.DataFrame, by, values) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one seed) and seed count per group.

    Columns come out as `<value>_mean`, `<value>_std`, plus `seeds`; groups
    keep their first-appearance order.
    """
    by = [by] if isinstance(by, str) else list(by)
    values = [v for v in values if v in frame.columns]
    grouped = frame.groupby(by, sort=False, dropna=False)
    means = grouped[values].mean().add_suffix("_mean")
    stds = grouped[values].std(ddof=1).add_suffix("_std")
    out = means.join(stds)
    out["seeds"] = grouped.size()
    ordered = [c for v in values for c in (f"{v}_mean", f"{v}_std")] + ["seeds"]
    return out[ordered].reset_index()
