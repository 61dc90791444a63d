"""Training one digit-recognizer run: fit, predict, submission, run record, plots."""

import contextlib
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from moe_keras.callbacks import ExpertUsage
from moe_keras.usage import moe_layers
from moe_keras.usage import routing_counts
from pipelines import data
from pipelines.models import build_model
from pipelines.models import count_parameters


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (the model itself is a `ModelConfig`)."""

    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    validation_fraction: float = 0.1
    patience: int = 10
    mixed_precision: bool = False
    jit_compile: bool | str = "auto"
    distribute: str | None = None
    verbose: int = 1


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


def write_text_atomically(path, text):
    """Writes text to a temp file beside `path`, then renames it into place,
    so a failure never leaves a half-written file where a good one was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def write_json_atomically(path, payload):
    """Writes `payload` as indented JSON, atomically."""
    write_text_atomically(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def device_description():
    """The accelerator TensorFlow sees, or the CPU."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return f"GPU: {', '.join(g.name for g in gpus)}"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def library_versions():
    versions = {"python": platform.python_version(), "keras": keras.__version__,
                "backend": keras.backend.backend(), "numpy": np.__version__}
    for name in ("tensorflow", "jax", "pandas", "sklearn"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return versions


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


def _fit(model_config, train_config, x_train, y_train, x_val, y_val, callbacks=()):
    """Builds, compiles and fits the model; returns it, its history and the
    `ExpertUsage` callback that recorded the routing per epoch. `callbacks`
    are added to the run's own (the benchmark times epochs with one)."""
    model = build_model(model_config, seed=train_config.seed)
    steps_per_epoch = -(-len(x_train) // train_config.batch_size)
    # Cosine decay to zero over the planned epochs: on a few thousand images
    # a plateau schedule reacts to validation noise (400 images) instead.
    schedule = keras.optimizers.schedules.CosineDecay(
        train_config.learning_rate, decay_steps=steps_per_epoch * train_config.epochs
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=train_config.jit_compile,
    )
    usage = ExpertUsage()
    callbacks = [
        usage,
        # Validation loss, not accuracy: on 400 images accuracy moves in
        # steps of 0.25 points and ties, so a plateau of ties stopped runs
        # ten epochs after an early high-learning-rate epoch and restored it
        # (MoE(3,5) seed 1: stopped at epoch 20, restored epoch 10, 97.9%).
        # Monitoring starts at 3/4 of the cosine schedule: the loss of 400
        # images is noisy enough that, watched from mid-schedule, 20 of 30
        # 40-epoch runs (15 of 21 MoE, 5 of 9 dense) restored a
        # mid-schedule epoch and scored 98.51% on the held-out digits on
        # average, against 98.93% for the runs that trained to the end
        # (reports/digit_recognizer_grid.md).
        keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=train_config.patience,
            restore_best_weights=True,
            start_from_epoch=train_config.epochs * 3 // 4,
        ),
        *callbacks,
    ]
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=train_config.epochs,
        batch_size=train_config.batch_size,
        callbacks=callbacks,
        verbose=train_config.verbose,
    ).history
    return model, history, usage


def train_run(model_config, train_config, source, submission_path, log=print):
    """Trains one model on `source` and writes its submission and run record.

    The submission and the record are each written to a temp file and
    renamed, so a failed run never replaces a good earlier file.

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
    keras.utils.set_random_seed(train_config.seed)
    if train_config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    images, labels = data.read_train_csv(source.train_csv)
    test_images = data.read_test_csv(source.test_csv)
    x_train, y_train, x_val, y_val = data.train_validation_split(
        images, labels, train_config.validation_fraction, train_config.seed
    )

    with distribution_scope(train_config.distribute, model_config):
        model, history, usage = _fit(
            model_config, train_config, x_train, y_train, x_val, y_val
        )

    verbose = train_config.verbose
    # Accuracy of the restored best weights, without augmentation or dropout.
    _, train_accuracy = model.evaluate(x_train, y_train, batch_size=512, verbose=0)
    _, validation_accuracy = model.evaluate(x_val, y_val, batch_size=512, verbose=0)
    probabilities = model.predict(test_images, batch_size=512, verbose=verbose)
    predictions = probabilities.argmax(axis=-1).astype(np.int32)
    test_accuracy = None
    if source.test_labels_csv is not None:
        truth = data.read_test_labels(source.test_labels_csv)
        test_accuracy = float((predictions == truth).mean())

    submission_path = Path(submission_path)
    data.write_submission(submission_path, predictions)
    total, active = count_parameters(model)
    layers = moe_layers(model)
    class_expert = {
        layer.name: routing_counts(model, x_val, y_val, layer=layer, num_classes=10).tolist()
        for layer in layers
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
        "versions": library_versions(),
        "device": device_description(),
        "history": {k: [float(v) for v in values] for k, values in history.items()},
        "expert_usage": usage.rows,
        "class_expert_counts": class_expert,
    }
    write_json_atomically(record_path, record)
    _plot_run(record, submission_path)
    keras.mixed_precision.set_global_policy("float32")
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


def summary_lines(record):
    """The one-screen end-of-run summary."""
    lines = [
        "",
        f"run            {record['name']}  ({record['device']})",
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
