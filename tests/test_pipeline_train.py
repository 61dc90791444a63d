"""The one fit loop (`pipelines.train.fit`) under the pipeline's and the
study's recipes, seeds, the dtype policy, and the run record."""

import json
import sys
from dataclasses import asdict

import keras
import numpy as np
import pandas as pd
import pytest

from pipelines import data
from pipelines import records
from pipelines import train
from pipelines.experiments import runner
from pipelines.experiments.datasets import Dataset
from pipelines.models import MAX_SEED
from pipelines.models import ModelConfig
from pipelines.models import parse_seed
from pipelines.train import TrainConfig

TINY_MLP = ModelConfig(arch="mlp", moe=(2, 3), hidden=8)


def _tiny_images(rows=60, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((rows, 28, 28, 1), dtype=np.float32), np.arange(rows) % 10


def _tiny_source(directory, train_rows=60, test_rows=12):
    """Kaggle-layout CSVs of random digits, with held-out labels."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    pixels = [f"pixel{i}" for i in range(784)]
    frame = pd.DataFrame(rng.integers(0, 256, size=(train_rows, 784)), columns=pixels)
    frame.insert(0, "label", np.arange(train_rows) % 10)
    frame.to_csv(directory / "train.csv", index=False)
    test = pd.DataFrame(rng.integers(0, 256, size=(test_rows, 784)), columns=pixels)
    test.to_csv(directory / "test.csv", index=False)
    labels = pd.DataFrame({"ImageId": np.arange(1, test_rows + 1), "Label": np.arange(test_rows) % 10})
    labels.to_csv(directory / "test_labels.csv", index=False)
    return data.DataSource(directory=directory, train_csv=directory / "train.csv",
                           test_csv=directory / "test.csv",
                           test_labels_csv=directory / "test_labels.csv", origin="local")


@pytest.fixture
def float32_policy():
    """Whatever a test does to the global dtype policy ends with float32."""
    yield
    keras.config.set_dtype_policy("float32")


class _LearningRates(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.rates = []

    def on_epoch_begin(self, epoch, logs=None):
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


# Recipes ---------------------------------------------------------------------


def test_pipeline_recipe_values_are_the_pipelines():
    config = TrainConfig()
    assert (config.epochs, config.batch_size, config.learning_rate, config.schedule) == (32, 128, 3e-3, "cosine")
    assert (config.validation_fraction, config.patience, config.verbose) == (0.1, 10, 1)
    assert config.steps_per_execution == "epoch" and config.tta is True
    # Validation loss is watched from 3/4 of the schedule on.
    assert config.early_stopping_from_epoch == 24
    assert TrainConfig(epochs=10).early_stopping_from_epoch == 10 * 3 // 4
    stopping = train.early_stopping(config)
    assert (stopping.monitor, stopping.patience, stopping.start_from_epoch) == ("val_loss", 10, 24)
    assert stopping.restore_best_weights
    schedule = train.learning_rate(config, steps_per_epoch=57)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert schedule.initial_learning_rate == 3e-3 and schedule.decay_steps == 57 * 32


def test_study_recipe_values_are_the_studys():
    recipe = runner.STUDY_RECIPE
    assert isinstance(recipe, TrainConfig)
    assert (recipe.epochs, recipe.batch_size, recipe.learning_rate, recipe.schedule) == (15, 64, 1e-3, "constant")
    assert (recipe.validation_fraction, recipe.patience, recipe.verbose) == (0.15, 3, 0)
    assert recipe.early_stopping_from_epoch == 0
    assert train.learning_rate(recipe, steps_per_epoch=57) == 1e-3
    # studies.py derives its fixed-epoch settings this way.
    settings = runner.TrainSettings(**{**vars(recipe), "patience": recipe.epochs})
    assert isinstance(settings, TrainConfig) and settings.patience == 15
    assert settings.schedule == "constant"


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_fit_trains_with_the_configured_schedule(schedule):
    x, y = _tiny_images()
    rates = _LearningRates()
    config = TrainConfig(epochs=3, batch_size=32, learning_rate=2e-3, schedule=schedule, verbose=0)
    model, history, usage, epoch_seconds = train.fit(TINY_MLP, config, x[:40], y[:40], x[40:], y[40:],
                                                     callbacks=[rates])
    assert len(history["loss"]) == len(epoch_seconds) == 3
    assert all(seconds > 0 for seconds in epoch_seconds)
    assert len(usage.rows) == 3 and "moe_entropy" in history
    assert rates.rates[0] == pytest.approx(2e-3)
    if schedule == "cosine":
        assert rates.rates[0] > rates.rates[1] > rates.rates[2] > 0
    else:
        assert rates.rates == pytest.approx([2e-3] * 3)


def test_fit_weights_depend_on_the_seed_alone():
    x, y = _tiny_images()
    config = TrainConfig(epochs=1, batch_size=32, verbose=0, seed=3)
    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(99)  # whatever the global state was
        model = train.fit(TINY_MLP, config, x[:40], y[:40], x[40:], y[40:]).model
        weights.append(keras.ops.convert_to_numpy(model.get_layer("classifier").kernel))
    np.testing.assert_array_equal(weights[0], weights[1])


def test_the_study_trains_through_the_same_fit(monkeypatch):
    calls = []
    real_fit = train.fit

    def spy(model_config, train_config, *args, **kwargs):
        calls.append((model_config, train_config))
        return real_fit(model_config, train_config, *args, **kwargs)

    monkeypatch.setattr(train, "fit", spy)
    x, y = _tiny_images(rows=80)
    flat = x.reshape(len(x), -1)
    dataset = Dataset("tiny", flat, y, flat[:20], y[:20], "80 random images")
    settings = runner.study_train_config(epochs=2, run_eagerly=True)
    row, history, model, _ = runner.train_once(runner.moe_config("n=3 k=1", 3, 1), dataset,
                                               np.int64(2), settings)
    ((model_config, train_config),) = calls
    assert model_config.input_shape == (784,) and model_config.routing_defaults == "layer"
    assert train_config.seed == 2 and type(train_config.seed) is int
    assert row["seed"] == 2 and type(row["seed"]) is int
    assert row["epochs_run"] == len(history) == 2
    assert "final_entropy" in row and model.get_layer("moe").router_type == "linear"


# Seeds -----------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [(7, 7), (np.int64(7), 7), (np.uint32(5), 5), ("42", 42),
                                            (" 3 ", 3), (MAX_SEED, MAX_SEED)])
def test_seeds_are_converted_to_int(value, expected):
    seed = parse_seed(value)
    assert seed == expected and type(seed) is int
    config = TrainConfig(seed=value)
    assert config.seed == expected and type(config.seed) is int


@pytest.mark.parametrize("value", [-1, MAX_SEED + 1, True, 1.0, np.float64(2), "1.5", "-3", "seven", "", None])
def test_bad_seeds_are_rejected_clearly(value):
    with pytest.raises(ValueError, match="seed"):
        parse_seed(value)
    with pytest.raises(ValueError, match="seed"):
        TrainConfig(seed=value)


def test_numpy_seed_trains():
    x, y = _tiny_images()
    config = TrainConfig(epochs=1, batch_size=32, verbose=0, seed=np.int64(1))
    model = train.fit(ModelConfig(arch="mlp", moe=(1, 2), hidden=4, hidden_dropout=0.2), config,
                      x[:40], y[:40], x[40:], y[40:]).model
    assert type(model.get_layer("moe").seed) is int


def test_study_cli_rejects_a_bad_training_config(tmp_path, capsys):
    from pipelines.experiments import main

    assert main(["collapse", "--patience", "-1", "--out", str(tmp_path)]) == 2
    assert "patience" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# Dtype policy ----------------------------------------------------------------


class _Fails(keras.callbacks.Callback):
    """Notes the global policy in force during training, then raises."""

    def on_train_begin(self, logs=None):
        self.policy = keras.config.dtype_policy().name
        raise RuntimeError("training failed")


@pytest.mark.parametrize("before", ["float32", "mixed_bfloat16"])
def test_fit_restores_the_dtype_policy_when_training_raises(before, float32_policy):
    keras.config.set_dtype_policy(before)
    x, y = _tiny_images()
    failing = _Fails()
    config = TrainConfig(epochs=1, batch_size=32, verbose=0, mixed_precision=True)
    with pytest.raises(RuntimeError, match="training failed"):
        train.fit(TINY_MLP, config, x[:40], y[:40], x[40:], y[40:], callbacks=[failing])
    assert failing.policy == "mixed_float16"
    assert keras.config.dtype_policy().name == before


def test_train_run_restores_the_dtype_policy_when_a_later_step_raises(tmp_path, monkeypatch, float32_policy):
    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(data, "write_submission", broken_write)
    source = _tiny_source(tmp_path / "data")
    config = TrainConfig(epochs=1, batch_size=32, verbose=0, mixed_precision=True)
    with pytest.raises(OSError, match="disk full"):
        train.train_run(TINY_MLP, config, source, tmp_path / "out" / "run.csv", log=lambda line: None)
    assert keras.config.dtype_policy().name == "float32"
    assert not (tmp_path / "out" / "run.json").exists()


# Run record ------------------------------------------------------------------


def test_benchmark_record_keeps_the_config_less_private_options_and_writes_only_when_asked(tmp_path):
    import argparse
    import time

    rows = [{"n": 8, "ms": [1.0, 2.0]}]
    out = tmp_path / "bench.json"
    args = argparse.Namespace(steps=5, json=str(out), case=None)
    record = records.benchmark_record(args, time.perf_counter(), rows, "jax", private=("json", "case"))
    assert record["config"] == {"steps": 5} and record["seed"] == 0
    assert record["backend"] == "jax" and record["rows"] == rows
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    unwritten = records.benchmark_record(argparse.Namespace(steps=5, json=None), time.perf_counter(), rows, "jax")
    assert unwritten["config"] == {"steps": 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]


def test_run_record_has_command_config_seed_versions_machine_metrics_timings(tmp_path):
    source = _tiny_source(tmp_path / "data")
    model_config = TINY_MLP
    train_config = TrainConfig(epochs=2, batch_size=32, verbose=0, seed="4", patience=5)
    lines = []
    result = train.train_run(model_config, train_config, source, tmp_path / "out" / "run.csv", log=lines.append)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["command"] == sys.argv
    assert record["model_config"] == json.loads(json.dumps(asdict(model_config)))
    assert record["train_config"] == json.loads(json.dumps(asdict(train_config)))
    assert record["seed"] == 4 and record["train_config"]["seed"] == 4
    assert record["versions"] == records.library_versions()
    assert record["machine"] == json.loads(json.dumps(records.machine_description()))
    for key in ("train_accuracy", "validation_accuracy", "test_accuracy", "params_total", "params_active"):
        assert record[key] == getattr(result, key)
    assert 0 <= record["test_accuracy"] <= 1
    assert record["epochs_run"] == len(record["history"]["loss"]) == 2
    timings = record["timings"]
    assert len(timings["epoch_s"]) == 2
    # Rounded to ms and 10 ms.
    assert 0 < sum(timings["epoch_s"]) <= timings["fit_s"] + 0.01
    assert timings["fit_s"] <= timings["total_s"] + 0.01
    assert timings["total_s"] == record["wall_time_s"]
    assert any(train.machine_line(record["machine"]) in line for line in lines)


def test_train_uses_the_projects_one_writer():
    from pipelines import cli

    # pipelines/cli.py imports the writer from pipelines.records, not from here.
    assert cli.write_text_atomically is records.write_text_atomically
    for copy in ("write_text_atomically", "write_bytes_atomically", "write_json_atomically",
                 "device_description", "library_versions", "_json_default"):
        assert not hasattr(train, copy), copy


def test_study_run_log_records_machine_and_versions_and_upgrades_an_old_log(tmp_path):
    import csv

    from pipelines.experiments import cli as study_cli

    old_header = "experiment,command,wall_seconds,finished_utc,quick\n"
    (tmp_path / "run_log.csv").write_text(old_header + "collapse,python -m pipelines.experiments collapse,12,"
                                          "2026-01-01 10:00,False\n")
    study_cli._log_run(tmp_path, "experts", ["experts", "--seeds", "5"], 61.4, False)
    with open(tmp_path / "run_log.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["experiment"] for row in rows] == ["collapse", "experts"]
    assert rows[0]["wall_seconds"] == "12" and rows[0]["machine"] == rows[0]["versions"] == ""
    new = rows[1]
    assert new["command"] == "python -m pipelines.experiments experts --seeds 5"
    assert new["wall_seconds"] == "61" and new["quick"] == "False"
    assert json.loads(new["machine"]) == json.loads(json.dumps(records.machine_description()))
    assert json.loads(new["versions"]) == records.library_versions()


# Saved probabilities, TTA, pseudo-labels ------------------------------------------


def test_splitting_row_numbers_splits_the_images_the_same_way():
    images, labels = _tiny_images(rows=50)
    x_train, y_train, x_val, y_val = data.train_validation_split(images, labels, 0.2, 3)
    train_index, y_train2, val_index, y_val2 = data.train_validation_split(np.arange(50), labels, 0.2, 3)
    np.testing.assert_array_equal(images[train_index], x_train)
    np.testing.assert_array_equal(images[val_index], x_val)
    np.testing.assert_array_equal(y_train2, y_train)
    np.testing.assert_array_equal(y_val2, y_val)


def test_run_saves_test_and_validation_probabilities_beside_its_record(tmp_path):
    from pipelines import ensemble

    source = _tiny_source(tmp_path / "data")
    config = TrainConfig(epochs=1, batch_size=32, verbose=0, tta=False)
    train.train_run(TINY_MLP, config, source, tmp_path / "out" / "run.csv", log=lambda line: None)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["probabilities"] == str(tmp_path / "out" / "run.probs.npz")
    assert record["data"]["test_labels_csv"] == str(source.test_labels_csv)
    assert "tta" not in record and "pseudo_label" not in record
    saved = ensemble.load_probabilities(record["probabilities"])
    assert saved["test"].shape == (12, 10) and saved["validation"].shape == (6, 10)
    np.testing.assert_allclose(saved["test"].sum(axis=1), 1, atol=1e-2)
    # The validation rows are train.csv's rows with their labels (row r has label r % 10).
    index = saved["validation_index"]
    assert len(set(index.tolist())) == 6 == record["data"]["validation_rows"]
    assert saved["validation_labels"].tolist() == (index % 10).tolist()
    # The submission is the argmax of the saved (float16) probabilities, up to near-ties.
    submitted = pd.read_csv(record["submission"])["Label"].to_numpy()
    top2 = np.sort(saved["test"], axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2e-3
    np.testing.assert_array_equal(submitted[clear], saved["test"].argmax(axis=1)[clear])


def test_tta_run_predicts_the_mean_over_the_shifted_images(tmp_path, monkeypatch):
    from pipelines import ensemble

    spy = _Events(monkeypatch)
    source = _tiny_source(tmp_path / "data")
    config = TrainConfig(epochs=1, batch_size=32, verbose=0, tta=True)
    lines = []
    train.train_run(TINY_MLP, config, source, tmp_path / "run.csv", log=lines.append)
    record = json.loads((tmp_path / "run.json").read_text())
    tta = record["tta"]
    assert tta["shifts"] == [[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]]
    saved = ensemble.load_probabilities(tmp_path / "run.probs.npz")
    ((_, _, model),) = spy.fits
    test_images = data.read_test_csv(source.test_csv)
    shifted = [ensemble.shift_images(test_images, dy, dx) for dy, dx in tta["shifts"]]
    by_hand = np.mean([model.predict(x, verbose=0) for x in shifted], axis=0)
    np.testing.assert_allclose(saved["test"], by_hand, atol=1e-3)
    assert np.abs(by_hand - model.predict(test_images, verbose=0)).max() > 1e-3  # TTA changed something
    truth = data.read_test_labels(source.test_labels_csv)
    submitted = pd.read_csv(tmp_path / "run.csv")["Label"].to_numpy()
    assert tta["test_accuracy"] == record["test_accuracy"] == pytest.approx((submitted == truth).mean())
    assert 0 <= tta["test_accuracy_without"] <= 1 and 0 <= tta["validation_accuracy_without"] <= 1
    assert tta["validation_accuracy"] == pytest.approx(
        ensemble.accuracy(saved["validation"], saved["validation_labels"]), abs=1 / 6)
    assert record["train_config"]["tta"] is True
    tta_line = next(line for line in lines if line.startswith("tta "))
    assert "over 5 views" in tta_line
    assert f"held-out test {tta['test_accuracy']:.4f} ({tta['test_accuracy_without']:.4f} without)" in tta_line


class _Events:
    """Spies on `fit` and on reading the held-out labels, in order."""

    def __init__(self, monkeypatch):
        self.events, self.fits = [], []
        real_fit, real_labels = train.fit, data.read_test_labels

        def fit(model_config, train_config, x, y, *rest, **kwargs):
            self.events.append("fit")
            result = real_fit(model_config, train_config, x, y, *rest, **kwargs)
            self.fits.append((x, y, result.model))
            return result

        def read_test_labels(path):
            self.events.append("held-out labels")
            return real_labels(path)

        monkeypatch.setattr(train, "fit", fit)
        monkeypatch.setattr(data, "read_test_labels", read_test_labels)


def test_pseudo_labels_train_a_second_model_on_the_confident_test_images(tmp_path, monkeypatch):
    spy = _Events(monkeypatch)
    source = _tiny_source(tmp_path / "data")
    test_images = data.read_test_csv(source.test_csv)
    # Every top probability of 10 classes is at least 0.1: all 12 test images qualify.
    # Without TTA, so the labels are the first model's plain predictions.
    config = TrainConfig(epochs=1, batch_size=32, verbose=0, pseudo_label=0.1, tta=False)
    lines = []
    train.train_run(TINY_MLP, config, source, tmp_path / "run.csv", log=lines.append)
    # The held-out labels are read once, after both fits, to score.
    assert spy.events == ["fit", "fit", "held-out labels"]
    (x1, y1, first_model), (x2, y2, second_model) = spy.fits
    assert first_model is not second_model
    assert len(x1) == 54 and len(x2) == 54 + 12
    np.testing.assert_array_equal(x2[:54], x1)
    np.testing.assert_array_equal(x2[54:], test_images)
    np.testing.assert_array_equal(y2[:54], y1)
    guessed = first_model.predict(test_images, verbose=0).argmax(axis=1)
    np.testing.assert_array_equal(y2[54:], guessed)
    record = json.loads((tmp_path / "run.json").read_text())
    pseudo = record["pseudo_label"]
    assert (pseudo["threshold"], pseudo["test_images"], pseudo["test_rows"], pseudo["retrained"]) == (0.1, 12, 12, True)
    assert pseudo["class_counts"] == np.bincount(guessed, minlength=10).tolist()
    truth = np.arange(12) % 10
    assert pseudo["first_pass"]["test_accuracy"] == pytest.approx((guessed == truth).mean())
    assert pseudo["first_pass"]["epochs_run"] == 1 and len(pseudo["first_pass"]["epoch_s"]) == 1
    assert record["data"]["train_rows"] == 54  # the labelled training split, as before
    assert record["train_config"]["pseudo_label"] == 0.1
    assert any("pseudo-labels  12 of 12 test images at >= 0.1" in line for line in lines)


def test_pseudo_labels_without_a_confident_image_do_not_retrain(tmp_path, monkeypatch):
    spy = _Events(monkeypatch)
    source = _tiny_source(tmp_path / "data")
    # One epoch on random pixels is nowhere near certain of anything.
    config = TrainConfig(epochs=1, batch_size=32, verbose=0, pseudo_label=1.0)
    train.train_run(TINY_MLP, config, source, tmp_path / "run.csv", log=lambda line: None)
    assert spy.events == ["fit", "held-out labels"]
    pseudo = json.loads((tmp_path / "run.json").read_text())["pseudo_label"]
    assert (pseudo["test_images"], pseudo["retrained"], sum(pseudo["class_counts"])) == (0, False, 0)


@pytest.mark.parametrize("threshold", [0, -0.5, 1.5])
def test_pseudo_label_threshold_must_be_a_probability(threshold):
    with pytest.raises(ValueError, match="pseudo_label"):
        TrainConfig(pseudo_label=threshold)


class _RawWeights(keras.callbacks.Callback):
    """The trained (not averaged) weights after every step."""

    def on_train_begin(self, logs=None):
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([keras.ops.convert_to_numpy(w) for w in self.model.trainable_weights])


def test_ema_model_keeps_the_moving_average_of_the_trained_weights():
    x, y = _tiny_images()
    momentum = 0.6
    raw = _RawWeights()
    config = TrainConfig(epochs=1, batch_size=10, verbose=0, ema=momentum, steps_per_execution=1)
    model = train.fit(TINY_MLP, config, x[:40], y[:40], x[40:], y[40:], callbacks=[raw]).model
    assert len(raw.steps) == 4
    # Adam's average starts at the first step's weights, then moves by
    # `1 - momentum` towards each step's.
    average = raw.steps[0]
    for step in raw.steps[1:]:
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, step)]
    kept = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    for expected, actual in zip(average, kept):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(kept[0], raw.steps[-1][0])


@pytest.mark.parametrize("momentum", [0, 1, 1.5])
def test_ema_momentum_must_be_between_0_and_1(momentum):
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=momentum)


# Determinism -------------------------------------------------------------------


def test_op_determinism_is_switched_on_for_the_block_and_back_off():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's op determinism switch")
    from tensorflow.python.framework import config as tf_config

    assert not tf_config.is_op_determinism_enabled()
    with train.op_determinism(False):
        assert not tf_config.is_op_determinism_enabled()
    with pytest.raises(RuntimeError, match="inside"):
        with train.op_determinism(True):
            assert tf_config.is_op_determinism_enabled()
            with train.op_determinism(True):  # nested: the outer block keeps it on
                pass
            assert tf_config.is_op_determinism_enabled()
            raise RuntimeError("inside")
    assert not tf_config.is_op_determinism_enabled()


def test_deterministic_fit_turns_auto_xla_off_and_is_recorded(tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("Keras turns XLA off under TensorFlow's op determinism")
    source = _tiny_source(tmp_path / "data")
    config = TrainConfig(epochs=1, batch_size=32, verbose=0, deterministic=True)
    train.train_run(TINY_MLP, config, source, tmp_path / "run.csv", log=lambda line: None)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["train_config"]["deterministic"] is True
    assert record["train_config"]["jit_compile"] == "auto" and record["jit_compile"] is False


def test_batches_turn_off_autotuning_and_reshuffle_every_epoch():
    x = np.arange(10, dtype="float32")[:, None]
    y = np.arange(10)
    dataset = train.batches(x, y, 4, shuffle_seed=3)
    # Autotuning made tearing down each epoch's iterator wait for its thread
    # (benchmarks/results/epoch_stall_cpu.json).
    assert dataset.options().autotune.enabled is False
    epochs = [np.concatenate([batch_y.numpy() for _, batch_y in dataset]) for _ in range(2)]
    for rows in epochs:
        assert sorted(rows.tolist()) == list(range(10))
    assert epochs[0].tolist() != epochs[1].tolist()
    again = np.concatenate([b.numpy() for _, b in train.batches(x, y, 4, shuffle_seed=3)])
    assert again.tolist() == epochs[0].tolist()
    assert [len(b) for _, b in train.batches(x, y, 4)] == [4, 4, 2]


def test_steps_per_execution_epoch_is_one_step_per_call_on_torch():
    """Keras' PyTorch trainer refuses `steps_per_execution` above 1, so the
    default "epoch" must not ask it for an epoch's steps in one call."""
    config = TrainConfig(epochs=1, batch_size=10, verbose=0)
    assert config.steps_per_execution == "epoch"
    model = train.compiled_model(TINY_MLP, config, steps_per_epoch=6)
    assert model.steps_per_execution == (1 if keras.backend.backend() == "torch" else 6)
    x, y = _tiny_images()
    train.fit(TINY_MLP, config, x[:50], y[:50], x[50:], y[50:])
