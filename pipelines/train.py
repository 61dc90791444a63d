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
from pipelines import ensemble
from pipelines import records
from pipelines.models import build_model
from pipelines.models import count_parameters
from pipelines.models import parse_seed

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
        deterministic: deterministic ops (`op_determinism`), so the same
            seed gives the same weights and submission bytes on CPU. On
            TensorFlow this turns XLA off under `jit_compile="auto"`.
        tta: test-time augmentation: predictions (test and validation
            probabilities, held-out test accuracy) are the mean softmax over
            each image and its one-pixel shifts (`ensemble.TTA_SHIFTS`).
        ema: `None`, or a momentum in (0, 1): Adam keeps an exponential
            moving average of the weights (Polyak averaging), validation and
            early stopping see the averaged weights (`SwapEMAWeights`), and
            the model keeps them.
        pseudo_label: `None`, or a threshold in (0, 1]: `train_run` trains,
            labels the test images whose top probability reaches it, then
            trains a fresh model on the training split plus those images.
        steps_per_execution: training steps per call into the compiled
            train function (`Model.compile`'s argument), or "epoch": all of
            an epoch's steps in one call. On small batches of a CPU, one
            call per step spends a large, uneven share of each epoch
            between steps; the cost is that batch-level callbacks and the
            progress bar see one update per call. On PyTorch, whose
            trainer takes one step per call, "epoch" is 1.
    """

    epochs: int = 32
    # 128 at 3e-3 rather than 64 at 2e-3: 12% less time per epoch on a
    # 2-core CPU, and validation accuracy and loss level with it over 5
    # seeds (reports/digit_recognizer_grid.md, "Recipe screen").
    batch_size: int = 128
    learning_rate: float = 3e-3
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
    deterministic: bool = False
    # On by default: over the cross-validated screen's 38 runs that recorded
    # both, the shifted views' mean scored +0.09 pp (95% t interval +0.02 to
    # +0.15) above the plain prediction on validation folds
    # (reports/digit_recognizer_grid.md, "Cross-validated screen").
    tta: bool = True
    ema: float | None = None
    pseudo_label: float | None = None
    steps_per_execution: int | str = "epoch"

    def __post_init__(self):
        object.__setattr__(self, "seed", parse_seed(self.seed))
        if self.pseudo_label is not None and not 0 < self.pseudo_label <= 1:
            raise ValueError(
                f"`pseudo_label` (the confidence threshold) must be in (0, 1]; got {self.pseudo_label}."
            )
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"`ema` (the averaging momentum) must be in (0, 1); got {self.ema}.")
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
        if self.steps_per_execution != "epoch" and not (
            isinstance(self.steps_per_execution, int) and self.steps_per_execution >= 1
        ):
            raise ValueError(
                "`steps_per_execution` must be a positive integer or 'epoch'; "
                f"got {self.steps_per_execution!r}."
            )

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


@contextlib.contextmanager
def op_determinism(enabled):
    """Runs the block with deterministic ops if `enabled`, and puts back the
    setting that was in force (also when the block raises).

    TensorFlow: `tf.config.experimental.enable_op_determinism()`, under
    which Keras resolves `jit_compile="auto"` to no XLA (and asking for XLA
    with `jit_compile=True` is up to XLA's own determinism). Torch:
    `torch.use_deterministic_algorithms(True)`. JAX: nothing to switch; XLA
    on CPU is deterministic (on GPU, set
    `XLA_FLAGS=--xla_gpu_deterministic_ops=true` before starting). Seeds are
    `fit`'s business (`keras.utils.set_random_seed`).
    """
    backend = keras.backend.backend()
    if not enabled or backend not in ("tensorflow", "torch"):
        yield
        return
    if backend == "tensorflow":
        # Keras itself reads the switch from here (trainer.model_supports_jit);
        # the public API has `enable_op_determinism` only.
        from tensorflow.python.framework import config as tf_config

        was_on = tf_config.is_op_determinism_enabled()
        tf_config.enable_op_determinism()
        try:
            yield
        finally:
            if not was_on:
                tf_config.disable_op_determinism()
    else:
        import torch

        was_on = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_on)


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


def batches(x, y, batch_size, shuffle_seed=None):
    """`(x, y)` as a `tf.data` pipeline of batches, built once for a whole fit.

    Given NumPy arrays, `Model.fit` makes a new input pipeline for every
    epoch and for every validation pass, and on a 2-core CPU the first step
    of some epochs stalled while it was built. With `shuffle_seed` the
    examples are reshuffled every epoch, from that seed.

    tf.data's autotuning is off: tearing down each epoch's iterator waited
    for its background thread, which held many epochs of a 2-core CPU up to
    a second longer (`benchmarks/results/epoch_stall_cpu.json`). Batches of
    in-memory arrays need no tuning; one batch is prefetched.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.batch(batch_size).prefetch(1).with_options(options)


def compiled_model(model_config, train_config, steps_per_epoch):
    """The model of `model_config` built with the run's seed and compiled as
    every run trains it: Adam on `learning_rate`'s schedule (keeping a moving
    average of the weights under `ema`), sparse
    cross-entropy, accuracy, the run's `jit_compile`, `run_eagerly` and
    `steps_per_execution`."""
    model = build_model(model_config, seed=train_config.seed)
    steps_per_execution = train_config.steps_per_execution
    if steps_per_execution == "epoch":
        # Keras' PyTorch trainer takes one step per call only.
        steps_per_execution = 1 if keras.backend.backend() == "torch" else steps_per_epoch
    averaging = {} if train_config.ema is None else dict(use_ema=True, ema_momentum=train_config.ema)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate(train_config, steps_per_epoch), **averaging),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=train_config.jit_compile,
        run_eagerly=train_config.run_eagerly,
        steps_per_execution=steps_per_execution,
    )
    return model


def fit(model_config, train_config, x_train, y_train, x_val, y_val, callbacks=()):
    """Seeds, builds, compiles and fits the model of `model_config` with the
    recipe of `train_config`.

    Keras' global seed is set to `train_config.seed` first, so the weights
    depend on the seed alone; with `train_config.deterministic` the ops are
    deterministic too (`op_determinism`), so the trained weights are
    repeatable on CPU. `callbacks` come after the run's own (routing
    statistics, epoch timer, early stopping), so their logs include the
    routing statistics.

    Returns:
        A `FitResult`.
    """
    keras.utils.set_random_seed(train_config.seed)
    # The model's layers keep the policy they were built with, so evaluating
    # or predicting after the block still runs in mixed precision.
    with op_determinism(train_config.deterministic), precision_policy(train_config.mixed_precision):
        steps_per_epoch = -(-len(x_train) // train_config.batch_size)
        model = compiled_model(model_config, train_config, steps_per_epoch)
        # First, so that its statistics are in the logs the others see.
        usage = ExpertUsage()
        timer = _EpochTimer()
        # Before early stopping: it swaps the averaged weights in at each
        # epoch's end, so early stopping keeps and restores those.
        averaging = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if train_config.ema else []
        history = model.fit(
            batches(x_train, y_train, train_config.batch_size, shuffle_seed=train_config.seed),
            validation_data=batches(x_val, y_val, train_config.batch_size),
            epochs=train_config.epochs,
            shuffle=False,  # `batches` reshuffles every epoch itself
            callbacks=[usage, timer, *averaging, early_stopping(train_config), *callbacks],
            verbose=train_config.verbose,
        ).history
    return FitResult(model, history, usage, timer.seconds)


def train_run(model_config, train_config, source, submission_path, log=print):
    """Trains one model on `source` and writes its submission and run record.

    The submission, the probabilities and the record are each written
    atomically (`pipelines.records`), the record last, so a failed run never
    replaces a good earlier file and a record means its files are whole.
    The record holds the command line, both configs, the seed, library
    versions, the machine, the metrics (the `RunResult` fields, the history,
    the routing), the timings, and the outcome of `--tta` and
    `--pseudo-label` when they are on.

    With `train_config.pseudo_label`, the test images whose top probability
    reaches the threshold are labelled with the first model's predictions
    and a fresh model (same seed) is trained on the training split plus
    them; the held-out labels (`source.test_labels_csv`) are read only to
    score the finished predictions.

    Args:
        model_config: a `ModelConfig`.
        train_config: a `TrainConfig`.
        source: a `pipelines.data.DataSource`.
        submission_path: where the Kaggle submission CSV goes; the JSON run
            record, the probabilities and the PNG plots go beside it
            (`<stem>.json`, `<stem>.probs.npz`, `<stem>-*.png`).
        log: where the end-of-run summary lines go.

    Returns:
        A `RunResult`.
    """
    with op_determinism(train_config.deterministic):
        return _train_run(model_config, train_config, source, Path(submission_path), log)


def _predictor(model, verbose=0):
    return lambda images: model.predict(images, batch_size=512, verbose=verbose)


def _views(model, images, train_config, verbose=0):
    """`(views, rows, classes)` probabilities: the image alone, or with
    `tta` also its shifted copies (the unshifted view first)."""
    predict = _predictor(model, verbose)
    if train_config.tta:
        return ensemble.predict_views(predict, images)
    return np.asarray(predict(images))[None]


def _train_run(model_config, train_config, source, submission_path, log):
    start = time.perf_counter()
    images, labels = data.read_train_csv(source.train_csv)
    test_images = data.read_test_csv(source.test_csv)
    # Split the row numbers (the same split as of the images: it depends on
    # the labels and the seed alone), so the saved validation probabilities
    # say which train.csv rows they are.
    train_index, y_train, val_index, y_val = data.train_validation_split(
        np.arange(len(images)), labels, train_config.validation_fraction, train_config.seed
    )
    x_train, x_val = images[train_index], images[val_index]

    fit_start = time.perf_counter()
    pseudo = None
    with distribution_scope(train_config.distribute, model_config):
        model, history, usage, epoch_seconds = fit(
            model_config, train_config, x_train, y_train, x_val, y_val
        )
        if train_config.pseudo_label is not None:
            first_test = _views(model, test_images, train_config).mean(axis=0)
            index, guessed = ensemble.pseudo_labels(first_test, train_config.pseudo_label)
            _, first_validation_accuracy = model.evaluate(x_val, y_val, batch_size=512, verbose=0)
            pseudo = {
                "threshold": train_config.pseudo_label,
                "test_images": int(len(index)),
                "test_rows": int(len(test_images)),
                "class_counts": np.bincount(guessed, minlength=10).tolist(),
                "retrained": bool(len(index)),
                "first_pass": {
                    "validation_accuracy": float(first_validation_accuracy),
                    "epochs_run": len(history.get("loss", [])),
                    "epoch_s": [round(s, 3) for s in epoch_seconds],
                },
            }
            first_predictions = ensemble.labels_of(first_test)
            if len(index):
                model, history, usage, epoch_seconds = fit(
                    model_config,
                    train_config,
                    np.concatenate([x_train, test_images[index]]),
                    np.concatenate([y_train, guessed]).astype(y_train.dtype),
                    x_val,
                    y_val,
                )
    fit_seconds = time.perf_counter() - fit_start

    # Accuracy of the restored best weights, without augmentation or dropout.
    _, train_accuracy = model.evaluate(x_train, y_train, batch_size=512, verbose=0)
    _, validation_accuracy = model.evaluate(x_val, y_val, batch_size=512, verbose=0)
    test_views = _views(model, test_images, train_config, verbose=train_config.verbose)
    validation_views = _views(model, x_val, train_config)
    probabilities = test_views.mean(axis=0)
    validation_probabilities = validation_views.mean(axis=0)
    if not np.isfinite(probabilities).all():
        # argmax of NaN is class 0: a diverged model would write all zeros.
        raise ValueError(
            f"training diverged (loss {history.get('loss', [float('nan')])[-1]}): the test predictions are "
            f"not finite, so no submission was written to {submission_path}; try a lower --lr"
        )
    predictions = ensemble.labels_of(probabilities)
    test_accuracy = truth = None
    if source.test_labels_csv is not None:
        truth = data.read_test_labels(source.test_labels_csv)
        test_accuracy = float((predictions == truth).mean())

    data.write_submission(submission_path, predictions)
    record_path = submission_path.with_suffix(".json")
    probabilities_path = ensemble.save_probabilities(
        ensemble.probabilities_path(record_path), probabilities, validation_probabilities, val_index, y_val
    )
    total, active = count_parameters(model)
    class_expert = {
        layer.name: routing_counts(model, x_val, y_val, layer=layer, num_classes=10).tolist()
        for layer in moe_layers(model)
    }
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
        "probabilities": str(probabilities_path),
        # What Keras made of `jit_compile` ("auto" is off under op determinism).
        "jit_compile": bool(model.jit_compile),
        "data": {
            "origin": source.origin,
            "train_csv": str(source.train_csv),
            "test_csv": str(source.test_csv),
            "test_labels_csv": None if source.test_labels_csv is None else str(source.test_labels_csv),
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
    if train_config.tta:
        record["tta"] = {
            "shifts": [list(shift) for shift in ensemble.TTA_SHIFTS],
            "validation_accuracy": ensemble.accuracy(validation_probabilities, y_val),
            "validation_accuracy_without": ensemble.accuracy(validation_views[0], y_val),
            "test_accuracy": test_accuracy,
            "test_accuracy_without": None if truth is None else ensemble.accuracy(test_views[0], truth),
        }
    if pseudo is not None:
        pseudo["first_pass"]["test_accuracy"] = (
            None if truth is None else float((first_predictions == truth).mean())
        )
        record["pseudo_label"] = pseudo
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
    tta = record.get("tta")
    if tta:
        line = (f"tta            over {len(tta['shifts'])} views: validation {tta['validation_accuracy']:.4f} "
                f"({tta['validation_accuracy_without']:.4f} without)")
        if tta["test_accuracy_without"] is not None:
            line += f", held-out test {tta['test_accuracy']:.4f} ({tta['test_accuracy_without']:.4f} without)"
        lines.append(line)
    pseudo = record.get("pseudo_label")
    if pseudo:
        lines.append(
            f"pseudo-labels  {pseudo['test_images']} of {pseudo['test_rows']} test images at "
            f">= {pseudo['threshold']:g}; first pass validation "
            f"{pseudo['first_pass']['validation_accuracy']:.4f}"
            + ("" if pseudo["retrained"] else " (none confident: not retrained)")
        )
    lines += [
        f"time           {record['wall_time_s']:.1f} s, {record['epochs_run']} epochs",
        f"submission     {record['submission']}",
        f"run record     {record['record']}",
    ]
    if record.get("probabilities"):
        lines.append(f"probabilities  {record['probabilities']}")
    return lines
