"""Training: the one fit loop of the pipeline, the study and the benchmark,
and one digit-recognizer run (fit, predict, submission, run record, plots)."""

import contextlib
import math
import sys
import time
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from moe_keras.callbacks import ExpertUsage
from moe_keras.usage import moe_layers
from moe_keras.usage import routing_counts
from pipelines import data
from pipelines import records
from pipelines.models import build_model
from pipelines.models import count_parameters
from pipelines.models import parse_seed
# pipelines/cli.py still imports the writer from here.
from pipelines.records import write_text_atomically  # noqa: F401

SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (the model itself is a `ModelConfig`).

    The defaults are the digit-recognizer pipeline's recipe; the study's is
    `pipelines.experiments.runner.STUDY_RECIPE`.

    Attributes:
        schedule: "cosine": the learning rate decays to zero over `epochs`;
            "constant": it stays at `learning_rate`.
        seed: the run's seed: an int, a NumPy integer or a string of digits
            (see `parse_seed`); stored as an int.
        patience: epochs without a lower validation loss before training
            stops; the best watched epoch's weights are restored.
        early_stopping_start: fraction of `epochs` trained before validation
            loss is watched (0: from the first epoch).
        run_eagerly: eager steps, which skip graph tracing (tiny runs).
    """

    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 2e-3
    schedule: str = "cosine"
    seed: int = 0
    validation_fraction: float = 0.1
    patience: int = 10
    early_stopping_start: float = 0.75
    mixed_precision: bool = False
    jit_compile: bool | str = "auto"
    run_eagerly: bool = False
    distribute: str | None = None
    verbose: int = 1

    def __post_init__(self):
        object.__setattr__(self, "seed", parse_seed(self.seed))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}; got {self.schedule!r}.")
        if not 0 <= self.early_stopping_start < 1:
            raise ValueError(
                f"`early_stopping_start` must be in [0, 1); got {self.early_stopping_start}."
            )
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1; got {getattr(self, name)}.")
        if self.patience < 0:
            raise ValueError(f"`patience` must be at least 0; got {self.patience}.")

    @property
    def early_stopping_from_epoch(self):
        """The first epoch (0-based) whose validation loss is watched."""
        return math.floor(self.epochs * self.early_stopping_start)


@dataclass
class RunResult:
    """What a finished run reports; also the body of its JSON run record."""

    name: str
    submission: str
    record: str
    train_accuracy: float
    validation_accuracy: float
    test_accuracy: float | None
    params_total: int
    params_active: int
    wall_time_s: float
    epochs_run: int


class FitResult(NamedTuple):
    """What `fit` returns: the trained model (best weights restored), the
    per-epoch logs, the `ExpertUsage` callback that recorded the routing per
    epoch, and the wall seconds of each epoch (validation included)."""

    model: keras.Model
    history: dict
    usage: ExpertUsage
    epoch_seconds: list


def distribution_scope(mode, model_config):
    """The scope a model is built and trained in, for `--distribute`.

    `"experts"`: expert parallelism through keras.distribution (JAX only):
    MoE experts split over the devices, the batch over the rest. `"data"`:
    `keras.distribution.DataParallel` on JAX, `tf.distribute.MirroredStrategy`
    on TensorFlow. `None`: one device.
    """
    from moe_keras import distribution

    if mode is None:
        return contextlib.nullcontext()
    backend = keras.backend.backend()
    if mode == "experts":
        if backend != "jax":
            raise ValueError(
                "--distribute experts needs KERAS_BACKEND=jax (keras.distribution "
                f"model parallelism); the backend is {backend}."
            )
        if model_config.moe is None:
            raise ValueError("--distribute experts needs an MoE model (--moe K,N).")
        counts = [model_config.moe[1]]
        if model_config.conv_moe is not None:
            counts.append(model_config.conv_moe[1])
        return distribution.expert_parallel(num_experts=math.gcd(*counts)).scope()
    if mode == "data" and backend == "jax":
        return distribution.data_parallel().scope()
    if mode == "data" and backend == "tensorflow":
        return distribution.mirrored_strategy().scope()
    raise ValueError(f"--distribute {mode} is not supported on the {backend} backend.")


@contextlib.contextmanager
def precision_policy(mixed):
    """Runs the block under the `mixed_float16` policy if `mixed`, and puts
    back the global policy that was in force, also when the block raises
    (a policy left behind would build every later model in float16)."""
    previous = keras.config.dtype_policy()
    try:
        if mixed:
            keras.config.set_dtype_policy("mixed_float16")
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def learning_rate(train_config, steps_per_epoch):
    """The optimizer's learning rate: a float or a schedule over the steps."""
    if train_config.schedule == "constant":
        return train_config.learning_rate
    # Cosine decay to zero over the planned epochs: on a few thousand images
    # a plateau schedule reacts to validation noise (400 images) instead.
    return keras.optimizers.schedules.CosineDecay(
        train_config.learning_rate, decay_steps=steps_per_epoch * train_config.epochs
    )


def early_stopping(train_config):
    """Early stopping on validation loss that restores the best weights.

    Validation loss, not accuracy: on 400 images accuracy moves in steps of
    0.25 points and ties, so a plateau of ties stopped pipeline runs ten
    epochs after an early high-learning-rate epoch and restored it (MoE(3,5)
    seed 1: stopped at epoch 20, restored epoch 10, 97.9%). The pipeline
    starts watching at 3/4 of the cosine schedule: the loss of 400 images is
    noisy enough that, watched from mid-schedule, 20 of 30 40-epoch runs (15
    of 21 MoE, 5 of 9 dense) restored a mid-schedule epoch and scored 98.51%
    on the held-out digits on average, against 98.93% for the runs that
    trained to the end (reports/digit_recognizer_grid.md).
    """
    return keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=train_config.patience,
        restore_best_weights=True,
        start_from_epoch=train_config.early_stopping_from_epoch,
    )


class _EpochTimer(keras.callbacks.Callback):
    """Wall seconds of each training epoch (validation included)."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def fit(model_config, train_config, x_train, y_train, x_val, y_val, callbacks=()):
    """Seeds, builds, compiles and fits the model of `model_config` with the
    recipe of `train_config`.

    Keras' global seed is set to `train_config.seed` first, so the weights
    depend on the seed alone. `callbacks` come after the run's own (routing
    statistics, epoch timer, early stopping), so their logs include the
    routing statistics.

    Returns:
        A `FitResult`.
    """
    keras.utils.set_random_seed(train_config.seed)
    # The model's layers keep the policy they were built with, so evaluating
    # or predicting after the block still runs in mixed precision.
    with precision_policy(train_config.mixed_precision):
        model = build_model(model_config, seed=train_config.seed)
        steps_per_epoch = -(-len(x_train) // train_config.batch_size)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate(train_config, steps_per_epoch)),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=train_config.jit_compile,
            run_eagerly=train_config.run_eagerly,
        )
        # First, so that its statistics are in the logs the others see.
        usage = ExpertUsage()
        timer = _EpochTimer()
        history = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=train_config.epochs,
            batch_size=train_config.batch_size,
            callbacks=[usage, timer, early_stopping(train_config), *callbacks],
            verbose=train_config.verbose,
        ).history
    return FitResult(model, history, usage, timer.seconds)


def train_run(model_config, train_config, source, submission_path, log=print):
    """Trains one model on `source` and writes its submission and run record.

    The submission and the record are each written atomically
    (`pipelines.records`), so a failed run never replaces a good earlier file.
    The record holds the command line, both configs, the seed, library
    versions, the machine, the metrics (the `RunResult` fields, the history,
    the routing), and the timings.

    Args:
        model_config: a `ModelConfig`.
        train_config: a `TrainConfig`.
        source: a `pipelines.data.DataSource`.
        submission_path: where the Kaggle submission CSV goes; the JSON run
            record and PNG plots go beside it (`<stem>.json`, `<stem>-*.png`).
        log: where the end-of-run summary lines go.

    Returns:
        A `RunResult`.
    """
    start = time.perf_counter()
    images, labels = data.read_train_csv(source.train_csv)
    test_images = data.read_test_csv(source.test_csv)
    x_train, y_train, x_val, y_val = data.train_validation_split(
        images, labels, train_config.validation_fraction, train_config.seed
    )

    fit_start = time.perf_counter()
    with distribution_scope(train_config.distribute, model_config):
        model, history, usage, epoch_seconds = fit(
            model_config, train_config, x_train, y_train, x_val, y_val
        )
    fit_seconds = time.perf_counter() - fit_start

    # Accuracy of the restored best weights, without augmentation or dropout.
    _, train_accuracy = model.evaluate(x_train, y_train, batch_size=512, verbose=0)
    _, validation_accuracy = model.evaluate(x_val, y_val, batch_size=512, verbose=0)
    probabilities = model.predict(test_images, batch_size=512, verbose=train_config.verbose)
    predictions = probabilities.argmax(axis=-1).astype(np.int32)
    test_accuracy = None
    if source.test_labels_csv is not None:
        truth = data.read_test_labels(source.test_labels_csv)
        test_accuracy = float((predictions == truth).mean())

    submission_path = Path(submission_path)
    data.write_submission(submission_path, predictions)
    total, active = count_parameters(model)
    class_expert = {
        layer.name: routing_counts(model, x_val, y_val, layer=layer, num_classes=10).tolist()
        for layer in moe_layers(model)
    }
    record_path = submission_path.with_suffix(".json")
    result = RunResult(
        name=model_config.name,
        submission=str(submission_path),
        record=str(record_path),
        train_accuracy=float(train_accuracy),
        validation_accuracy=float(validation_accuracy),
        test_accuracy=test_accuracy,
        params_total=total,
        params_active=active,
        wall_time_s=round(time.perf_counter() - start, 2),
        epochs_run=len(history.get("loss", [])),
    )
    record = {
        **asdict(result),
        "status": "complete",
        "command": list(sys.argv),
        "model_config": asdict(model_config),
        "train_config": asdict(train_config),
        "seed": train_config.seed,
        "data": {
            "origin": source.origin,
            "train_csv": str(source.train_csv),
            "test_csv": str(source.test_csv),
            "train_rows": int(len(x_train)),
            "validation_rows": int(len(x_val)),
            "test_rows": int(len(test_images)),
        },
        "versions": records.library_versions(),
        "machine": records.machine_description(),
        "timings": {
            "total_s": result.wall_time_s,
            "fit_s": round(fit_seconds, 2),
            "epoch_s": [round(s, 3) for s in epoch_seconds],
        },
        "history": {k: [float(v) for v in values] for k, values in history.items()},
        "expert_usage": usage.rows,
        "class_expert_counts": class_expert,
    }
    records.write_json_atomically(record_path, record)
    _plot_run(record, submission_path)
    for line in summary_lines(record):
        log(line)
    return result


def _plot_run(record, submission_path):
    from pipelines import plots

    stem = submission_path.with_suffix("")
    plots.training_curves(record, f"{stem}-curves.png")
    if record["expert_usage"]:
        plots.expert_load(record, f"{stem}-load.png")
        plots.class_expert_heatmaps(record, f"{stem}-routing.png")


def machine_line(machine):
    """`records.machine_description()` in a few words: the accelerator, or
    the CPU and its cores."""
    if machine.get("accelerator"):
        return machine["accelerator"]
    return f"CPU: {machine['processor']}, {machine['cpu_count']} cores"


def summary_lines(record):
    """The one-screen end-of-run summary."""
    lines = [
        "",
        f"run            {record['name']}  ({machine_line(record['machine'])})",
        f"params         {record['params_total']:,} total, "
        f"{record['params_active']:,} active per input",
        f"accuracy       train {record['train_accuracy']:.4f}  "
        f"validation {record['validation_accuracy']:.4f}"
        + (
            f"  held-out test {record['test_accuracy']:.4f}"
            if record["test_accuracy"] is not None
            else ""
        ),
    ]
    last_epoch = {}
    for row in record["expert_usage"]:
        last_epoch[row["layer"]] = row
    for layer, row in last_epoch.items():
        loads = " ".join(
            f"{row[k]:.2f}" for k in sorted(
                (k for k in row if k.startswith("load_")), key=lambda k: int(k[5:])
            )
        )
        lines.append(
            f"experts        {layer}: load [{loads}]  entropy {row['entropy']:.3f}"
            f" of {row['max_entropy']:.3f}  dead {row['dead_experts']}"
        )
    lines += [
        f"time           {record['wall_time_s']:.1f} s, {record['epochs_run']} epochs",
        f"submission     {record['submission']}",
        f"run record     {record['record']}",
    ]
    return lines
