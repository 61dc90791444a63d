"""Tests of `python -m pipelines.experiments`: every --quick path, aggregation,
the report and the CLI's error handling."""

from __future__ import annotations

import gzip
import json
import math
import struct

import numpy as np
import pandas as pd
import pytest

from pipelines.experiments import datasets as datasets_lib
from pipelines.experiments import main
from pipelines.experiments import report as report_lib
from pipelines.experiments.runner import aggregate

EXPERIMENTS = {
    "collapse": ["collapse_load.png", "collapse_entropy.png"],
    "balancing": ["balancing.png"],
    "experts": ["experts_accuracy.png", "experts_params.png"],
    "datasets": ["datasets.png"],
    "specialisation": ["specialisation.png"],
    "gating": ["gating_entropy.png"],
    "datasize": ["datasize.png", "datasize_gap.png"],
    "experts_scale": ["experts_scale.png"],
    "conv_experts": ["conv_experts.png"],
}


def _write_idx(path, array):
    """Writes an unsigned-byte idx file (gzipped), like Fashion-MNIST's."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Runs every experiment's --quick path once into one output folder.

    A tiny fake idx dataset stands in for Fashion-MNIST and the CIFAR-10
    folder is empty, so the run is hermetic and exercises the skip message.
    """
    root = tmp_path_factory.mktemp("study")
    idx = root / "idx"
    idx.mkdir()
    rng = np.random.default_rng(0)
    for split, size in (("train", 400), ("t10k", 150)):
        _write_idx(idx / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (size, 28, 28)))
        _write_idx(idx / f"{split}-labels-idx1-ubyte.gz", np.arange(size) % 10)
    out, runs = root / "out", root / "runs"
    common = ["--quick", "--out", str(out), "--runs", str(runs), "--data", str(idx),
              "--cifar-dir", str(root / "no-cifar")]
    codes = {name: main([name, *common]) for name in EXPERIMENTS}
    return out, codes, runs / "quick-records"


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_experiment_writes_csv_and_png(study, name):
    out, codes, _ = study
    assert codes[name] == 0
    table = pd.read_csv(out / f"{name}.csv")
    assert len(table) >= 1
    assert table["test_accuracy"].between(0, 1).all()
    for figure in EXPERIMENTS[name]:
        assert (out / figure).stat().st_size > 1000, figure
    log = pd.read_csv(out / "run_log.csv")
    assert name in set(log["experiment"])


def test_conv_experts_reads_its_plain_cnn_from_the_datasize_sweep(study):
    out, _, records = study
    conv = pd.read_csv(out / "conv_experts.csv")
    assert set(conv["routing"]) == {"none", "sample", "pixel"}
    plain = conv[conv["routing"] == "none"]
    assert list(plain["config"]) == ["cnn dense head"] and list(plain["train_size"]) == [300]
    # Trained once, by whichever experiment came first (datasize here).
    assert not list((records / "conv_experts").glob("*dense-head*"))
    assert [p.name for p in (records / "datasize").glob("fashion-300--cnn-dense-head--*")] == \
        ["fashion-300--cnn-dense-head--s0.json"]
    sweep = pd.read_csv(out / "datasize.csv").set_index(["config", "dataset", "train_size"])
    assert plain["test_accuracy"].iloc[0] == sweep.loc[("cnn dense head", "fashion", 300), "test_accuracy"]


def test_datasets_reports_missing_cifar_and_runs_the_rest(study):
    out, _, _ = study
    notes = (out / "datasets_notes.txt").read_text()
    assert "CIFAR-10 not found" in notes
    assert set(pd.read_csv(out / "datasets.csv")["dataset"]) == {"digits", "fashion"}


def test_missing_cifar_raises_clear_error(tmp_path):
    with pytest.raises(datasets_lib.DatasetUnavailable, match="CIFAR-10 not found.*data_batch_1"):
        datasets_lib.load_cifar10(tmp_path, None, None)


def _idx_arrays():
    rng = np.random.default_rng(1)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(20) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(10)[::-1],
    }


def _write_plain_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_reads_plain_and_gzipped_files(tmp_path, compress):
    arrays = _idx_arrays()
    for name, array in arrays.items():
        if compress:
            _write_idx(tmp_path / f"{name}.gz", array)
        else:
            _write_plain_idx(tmp_path / name, array)
    dataset = datasets_lib.load_idx(tmp_path, None, None)

    # No subset asked for, so the files' order is kept.
    expected = arrays["train-images-idx3-ubyte"].reshape(20, 784) / 255
    np.testing.assert_allclose(dataset.x_train, expected, rtol=1e-6)
    np.testing.assert_array_equal(dataset.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_allclose(dataset.x_test, arrays["t10k-images-idx3-ubyte"].reshape(10, 784) / 255, rtol=1e-6)
    np.testing.assert_array_equal(dataset.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert dataset.x_train.dtype == np.float32 and dataset.y_train.dtype == np.int64
    assert "20 of 20 train" in dataset.description
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{name}.gz" if compress else name for name in arrays)  # nothing unpacked beside them


def _broken(tmp_path, damage):
    for name, array in _idx_arrays().items():
        _write_idx(tmp_path / f"{name}.gz", array)
    damage(tmp_path)
    with pytest.raises(datasets_lib.DatasetUnavailable) as caught:
        datasets_lib.load_idx(tmp_path, None, None)
    return str(caught.value)


def test_load_idx_missing_file(tmp_path):
    message = _broken(tmp_path, lambda d: (d / "t10k-labels-idx1-ubyte.gz").unlink())
    assert "t10k-labels-idx1-ubyte not found" in message and "skipping" in message


def test_load_idx_corrupt_gzip(tmp_path):
    message = _broken(tmp_path, lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all"))
    assert "cannot unpack" in message and "train-images-idx3-ubyte.gz" in message


def test_load_idx_truncated_images_and_count_mismatch(tmp_path):
    def truncate(d):
        _write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((19, 28, 28)))

    message = _broken(tmp_path, truncate)
    assert "train-images-idx3-ubyte" in message and "one label each" in message


def test_load_idx_rejects_images_given_as_labels(tmp_path):
    def swap(d):
        # mlxtend skips an 8-byte labels header, so these 16 header bytes
        # and 7,840 pixels read as 7,848 "labels", matching 7,848 images.
        _write_idx(d / "t10k-labels-idx1-ubyte.gz", np.full((10, 28, 28), 200))
        _write_idx(d / "t10k-images-idx3-ubyte.gz", np.zeros((7848, 28, 28)))

    message = _broken(tmp_path, swap)
    assert "label 200" in message


@pytest.mark.skipif(not (datasets_lib.DEFAULT_FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_load_idx_reads_debian_fashion_mnist():
    dataset = datasets_lib.load_idx(datasets_lib.DEFAULT_FASHION_DIR, 1000, 500)
    assert dataset.x_train.shape == (1000, 784) and dataset.x_test.shape == (500, 784)
    assert np.bincount(dataset.y_train).tolist() == [100] * 10
    assert "of 60,000 train" in dataset.description and "of 10,000 test" in dataset.description
    assert 0.0 <= dataset.x_train.min() and dataset.x_train.max() == 1.0


def test_report_contains_numbers_from_the_csvs(study):
    out, _, _ = study
    path = main(["report", "--out", str(out)]) == 0 and out / report_lib.REPORT_NAME
    text = path.read_text()
    experts = pd.read_csv(out / "experts_summary.csv")
    base = experts[experts["model"] == "baseline"].iloc[0]
    assert f"{100 * base.test_accuracy_mean:.2f}" in text
    assert f"{int(base.params_total_mean):,}" in text
    balancing = pd.read_csv(out / "balancing_summary.csv")
    for row in balancing.itertuples():
        assert f"{row.final_entropy_mean:.3f}" in text
    specialisation = pd.read_csv(out / "specialisation.csv")
    assert f"{specialisation['class_expert_nmi'].iloc[0]:.2f}" in text
    for heading in ("## 1. Collapse", "## 2. Balancing", "## 3. Number of experts", "## 4. Datasets",
                    "## 5. Specialisation", "backend `"):
        assert heading in text


def _figure_writers():
    """One figure of the pipeline's and one of the study's plot modules."""
    from pipelines import plots as pipeline_plots
    from pipelines.experiments import plots as study_plots

    record = {"name": "run", "history": {"loss": [1.0, 0.5], "accuracy": [0.5, 0.8]}}
    summary = pd.DataFrame({"dataset": ["digits", "digits"], "config": ["baseline", "moe"],
                            "test_accuracy_mean": [0.9, 0.92], "test_accuracy_std": [0.01, 0.02]})
    counts = {"n=2": np.arange(20).reshape(10, 2)}
    return {
        "curves.png": lambda path: pipeline_plots.training_curves(record, path),
        "datasets.png": lambda path: study_plots.accuracy_by_dataset(summary, path),
        "heatmap.png": lambda path: study_plots.routing_heatmaps(counts, "digits", path),
    }


def test_figures_are_written_atomically(tmp_path, monkeypatch):
    import os

    import matplotlib.pyplot as plt

    for name, draw in _figure_writers().items():
        path = tmp_path / "figures" / name
        draw(path)
        good = path.read_bytes()
        assert good.startswith(b"\x89PNG") and len(good) > 1000

        def failing_replace(source, target):
            raise OSError("disk full")

        with monkeypatch.context() as patch:
            patch.setattr(os, "replace", failing_replace)
            with pytest.raises(OSError, match="disk full"):
                draw(path)
        # The old figure stays whole, no temp file is left, no figure open.
        assert path.read_bytes() == good
        assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
        assert plt.get_fignums() == []


def _run_log(path, **columns):
    log = pd.DataFrame({"experiment": ["collapse", "experts"],
                        "command": ["python -m pipelines.experiments collapse", "python -m pipelines.experiments experts"],
                        "wall_seconds": [10, 20], "finished_utc": ["2026-01-01 10:00", "2026-01-01 11:00"],
                        "quick": [False, False], **columns})
    log.to_csv(path / "run_log.csv", index=False)


def test_report_takes_machine_and_versions_from_the_run_log(tmp_path):
    machines = [
        {"platform": "Linux-6.1-x86_64", "processor": "x86_64", "cpu_count": 96, "accelerator": "NVIDIA H100"},
        {"platform": "Linux-6.1-x86_64", "processor": "x86_64", "cpu_count": 2, "accelerator": None},
    ]
    versions = {"python": "3.11.7", "keras": "3.15.1", "backend": "jax", "jax": "0.10.2", "numpy": "2.4.6"}
    _run_log(tmp_path, machine=[json.dumps(m) for m in machines], versions=[json.dumps(versions)] * 2)
    text = report_lib.build_report(tmp_path)

    hardware = next(line for line in text.splitlines() if line.startswith("- Hardware:"))
    assert "96-core CPU (x86_64), NVIDIA H100, Linux-6.1-x86_64 (collapse)" in hardware
    assert "2-core CPU (x86_64), no accelerator, Linux-6.1-x86_64 (experts)" in hardware
    software = next(line for line in text.splitlines() if line.startswith("- Software:"))
    assert software == "- Software: backend `jax`: Keras 3.15.1, JAX 0.10.2, NumPy 2.4.6, Python 3.11.7."
    assert "not recorded" not in text


def test_report_says_machine_not_recorded_instead_of_its_own(tmp_path, monkeypatch):
    import os
    import platform

    # Whatever the report machine is, none of it may reach the report.
    monkeypatch.setattr(os, "cpu_count", lambda: 4321)
    monkeypatch.setattr(platform, "processor", lambda: "report-machine-cpu")
    monkeypatch.setattr(platform, "machine", lambda: "report-machine-arch")
    _run_log(tmp_path, machine=["", "2-core CPU, recorded as text"])
    text = report_lib.build_report(tmp_path)
    hardware = next(line for line in text.splitlines() if line.startswith("- Hardware:"))
    assert hardware == "- Hardware: machine not recorded (collapse); 2-core CPU, recorded as text (experts)."
    assert "4321" not in text and "report-machine" not in text

    _run_log(tmp_path)
    text = report_lib.build_report(tmp_path)
    assert "- Hardware: machine not recorded (run_log.csv has no `machine` for these runs)." in text
    assert "versions not recorded" in text and "the environment that wrote this report has backend `" in text
    assert "4321" not in text and "report-machine" not in text


def test_report_marks_missing_sections(tmp_path):
    text = report_lib.build_report(tmp_path)
    assert "Not run (`python -m pipelines.experiments collapse`)" in text


def test_class_expert_nmi_is_mutual_information_over_expert_entropy():
    from pipelines.experiments.studies import normalised_mutual_information as nmi

    # p(class, expert) = [[1/2, 0], [1/4, 1/4]]: p(class) = (1/2, 1/2), p(expert) = (3/4, 1/4).
    mutual = 0.5 * math.log(0.5 / 0.375) + 0.25 * math.log(0.25 / 0.375) + 0.25 * math.log(0.25 / 0.125)
    expert_entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert nmi([[2, 0], [1, 1]]) == pytest.approx(mutual / expert_entropy)
    assert nmi(np.eye(10, dtype=int) * 30) == pytest.approx(1.0)  # the class fixes the expert
    assert nmi(np.ones((10, 4), dtype=int)) == pytest.approx(0.0, abs=1e-12)  # routing ignores the class
    # Two classes per expert: the expert is fixed (1), though not the class.
    assert nmi(np.kron(np.eye(5, dtype=int), np.ones((2, 1), dtype=int))) == pytest.approx(1.0)
    assert nmi(np.c_[np.arange(1, 11), np.zeros(10, dtype=int)]) == 0.0  # one expert takes everything


def test_aggregate_mean_and_sample_std():
    table = pd.DataFrame({
        "config": ["a", "a", "a", "b", "b", "c"],
        "test_accuracy": [0.90, 0.92, 0.94, 0.80, 0.84, 0.5],
        "epoch_seconds": [1.0, 2.0, 3.0, 4.0, 4.0, 7.0],
    })
    summary = aggregate(table, "config", ["test_accuracy", "epoch_seconds", "not_a_column"]).set_index("config")
    assert list(summary.index) == ["a", "b", "c"]
    assert summary.loc["a", "test_accuracy_mean"] == pytest.approx(0.92)
    assert summary.loc["a", "test_accuracy_std"] == pytest.approx(0.02)  # ddof=1
    assert summary.loc["b", "test_accuracy_std"] == pytest.approx(np.std([0.80, 0.84], ddof=1))
    assert summary.loc["b", "epoch_seconds_std"] == 0.0
    assert math.isnan(summary.loc["c", "test_accuracy_std"])  # one seed: no spread
    assert summary.loc["a", "seeds"] == 3 and summary.loc["c", "seeds"] == 1
    assert "not_a_column_mean" not in summary.columns


def test_unknown_experiment_exits_2(capsys):
    assert main(["nonsense"]) == 2
    error = capsys.readouterr().err
    assert "unknown experiment 'nonsense'" in error and "collapse" in error



def test_aggregate_one_seed_std_is_nan():
    table = pd.DataFrame({"config": ["a", "a", "c"], "test_accuracy": [0.90, 0.92, 0.5]})
    summary = aggregate(table, "config", ["test_accuracy"]).set_index("config")
    assert summary.loc["a", "test_accuracy_std"] == pytest.approx(np.std([0.90, 0.92], ddof=1))
    assert math.isnan(summary.loc["c", "test_accuracy_std"])  # one seed: no sample std


def test_report_prints_na_for_a_one_seed_spread():
    nan = float("nan")
    assert report_lib._pct(0.97123, 0.0031) == "97.12 ± 0.31"
    assert report_lib._pct(0.97123, nan) == "97.12 ± n/a (1 seed)"
    assert report_lib._pm(0.5, nan) == "0.500 ± n/a (1 seed)"
    assert report_lib._pm(0.5, 0.0, 2) == "0.50 ± 0.00"  # a real zero spread stays 0


# Runs at scale: records, resume, shards, sized epochs ------------------------


def test_quick_runs_are_recorded_and_read_back_instead_of_retrained(study, tmp_path, monkeypatch):
    from pipelines.experiments import runner

    out, _, _ = study
    records = out.parent / "runs" / "quick-records" / "datasize"
    first = sorted(records.glob("*.json"))
    # Two Fashion sizes and the digits, two MLP and two CNN models, one seed.
    assert len(first) == 3 * 4
    record = json.loads(first[0].read_text())
    assert {"command", "versions", "machine", "metrics", "history", "timings"} <= set(record)
    assert record["metrics"]["epochs_run"] == len(record["history"]["loss"])

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr(runner, "train_once", no_training)
    again = tmp_path / "again"
    assert main(["datasize", "--quick", "--out", str(again), "--runs", str(out.parent / "runs"),
                 "--data", str(out.parent / "idx")]) == 0
    before = pd.read_csv(out / "datasize.csv")
    after = pd.read_csv(again / "datasize.csv")
    pd.testing.assert_frame_equal(before, after, check_like=True)


def test_shards_split_the_runs_and_the_last_call_writes_the_tables(study, tmp_path):
    out, _, _ = study
    common = ["--quick", "--runs", str(tmp_path / "runs"), "--data", str(out.parent / "idx"),
              "--arch", "mlp"]
    assert main(["datasize", *common, "--out", str(tmp_path / "a"), "--shard", "0/2"]) == 0
    records = tmp_path / "runs" / "quick-records" / "datasize"
    # 3 datasets x 2 models x 1 seed = 6 runs; shard 0 owns positions 0
    # of each dataset's 2 runs.
    assert len(list(records.glob("*.json"))) == 3
    assert not (tmp_path / "a" / "datasize.csv").exists()
    # Tables from what is recorded so far, training nothing.
    assert main(["datasize", *common, "--out", str(tmp_path / "a"), "--recorded-only"]) == 0
    assert len(list(records.glob("*.json"))) == 3
    assert len(pd.read_csv(tmp_path / "a" / "datasize.csv")) == 3
    assert main(["datasize", *common, "--out", str(tmp_path / "a"), "--shard", "1/2"]) == 0
    assert len(list(records.glob("*.json"))) == 6
    assert main(["datasize", *common, "--out", str(tmp_path / "a")]) == 0
    assert len(pd.read_csv(tmp_path / "a" / "datasize.csv")) == 6


def test_only_trains_the_named_configuration_and_leaves_the_tables(study, tmp_path):
    out, _, _ = study
    common = ["--quick", "--runs", str(tmp_path / "runs"), "--data", str(out.parent / "idx"),
              "--arch", "mlp", "--out", str(tmp_path / "a")]
    assert main(["datasize", *common, "--only", "n=4 k=1"]) == 0
    records = sorted(p.name for p in (tmp_path / "runs" / "quick-records" / "datasize").glob("*.json"))
    # One run of the two quick MLP models on each of the 3 datasets.
    assert len(records) == 3 and all("--n4-k1--" in name for name in records), records
    assert not (tmp_path / "a" / "datasize.csv").exists()


def test_a_broken_record_is_named_and_not_trained_over(tmp_path):
    from pipelines.experiments.run_store import RunStore

    store = RunStore(tmp_path, "datasize")
    path = store.path("n=4 k=1", "fashion-1000", 2)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="fashion-1000--n4-k1--s2.json"):
        store.load("n=4 k=1", "fashion-1000", 2)
    assert path.read_text() == "{not json"


@pytest.mark.parametrize("text", ["2/2", "x", "1/0"])
def test_bad_shard_exits_2(text, capsys):
    with pytest.raises(SystemExit) as error:
        main(["datasize", "--shard", text])
    assert error.value.code == 2
    assert "I/N" in capsys.readouterr().err or "0 <= I < N" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arch, train_size, epochs, patience",
    [
        # 51,000 fitted rows / 64 = 797 steps an epoch; 15,000 / 797 -> 19.
        ("mlp", 60_000, 19, 3),
        # 850 rows -> 14 steps; 15,000 / 14 = 1,072 epochs, capped at 150.
        ("mlp", 1_000, 150, 10),
        # 12,750 rows -> 200 steps; 8,000 / 200 = 40 epochs, patience 40 // 8.
        ("cnn", 15_000, 40, 5),
        # 797 steps; 8,000 / 797 -> 11 epochs.
        ("cnn", 60_000, 11, 3),
    ],
)
def test_sized_settings(arch, train_size, epochs, patience):
    from pipelines.experiments.runner import STUDY_RECIPE
    from pipelines.experiments.studies import sized_settings

    settings = sized_settings(STUDY_RECIPE, arch, train_size)
    assert (settings.epochs, settings.patience) == (epochs, patience)
    assert settings.learning_rate == STUDY_RECIPE.learning_rate


@pytest.mark.parametrize("num_experts", [4, 16])
def test_wide_baseline_has_the_moes_total_parameters(num_experts):
    from dataclasses import replace

    from pipelines.experiments import models
    from pipelines.models import build_model

    moe = build_model(replace(models.moe(num_experts), input_shape=(784,)))
    wide = models.wide_baseline(num_experts)
    dense = build_model(replace(wide, input_shape=(784,)))
    width = wide.mlp_hidden
    # 784-w-64-10 with biases, counted by hand.
    assert dense.count_params() == 784 * width + width + width * 64 + 64 + 64 * 10 + 10
    assert abs(dense.count_params() - moe.count_params()) <= 784 + 1 + 64


def test_recorded_only_with_no_records_says_so_and_exits_1(study, tmp_path, capsys):
    out, _, _ = study
    code = main(["datasize", "--quick", "--recorded-only", "--out", str(tmp_path / "out"),
                 "--runs", str(tmp_path / "runs"), "--data", str(out.parent / "idx")])
    assert code == 1
    assert "no run of datasize is recorded under" in capsys.readouterr().err
    assert not (tmp_path / "out" / "datasize.csv").exists()


def test_conv_experts_keep_the_routing_their_recorded_runs_had():
    from pipelines.experiments import models as experiment_models
    from pipelines.models import build_model

    # No loss-free bias for k = 1, as when the runs were recorded (the
    # pipeline's default has it since).
    model = build_model(experiment_models.cnn_conv_experts("pixel"))
    assert model.get_layer("moe_conv2").bias_update_rate == 0.0
    model = build_model(experiment_models.cnn_conv_experts("sample", top_k=2))
    assert model.get_layer("moe_conv2").bias_update_rate == 1e-3


def _tiny_idx(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, size in (("train", 400), ("t10k", 150)):
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (size, 28, 28)))
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(size) % 10)
    return folder


def test_experts_and_specialisation_on_another_dataset_keep_the_digits_tables(tmp_path):
    target = tmp_path / "out"
    common = ["--quick", "--dataset", "fashion", "--data", str(_tiny_idx(tmp_path / "idx")), "--out", str(target),
              "--runs", str(tmp_path / "runs")]
    assert main(["experts", *common]) == 0
    assert main(["specialisation", *common]) == 0
    written = sorted(p.name for p in target.iterdir())
    assert "experts_fashion10k.csv" in written and "specialisation_fashion10k.csv" in written, written
    # The digits' tables (reports/experts.csv feeds the report) are not replaced.
    assert not {"experts.csv", "experts_summary.csv", "specialisation.csv"} & set(written), written


@pytest.mark.parametrize("name", ["experts", "datasets", "specialisation"])
@pytest.mark.parametrize("flag", [["--recorded-only"], ["--shard", "0/2"], ["--only", "n=2 k=1"]])
def test_experiments_without_records_refuse_record_options(name, flag, tmp_path, capsys):
    assert main([name, "--quick", *flag, "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]) == 2
    assert "keeps no run records" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["collapse", "gating"])
def test_recorded_only_with_no_records_exits_1_for_the_epoch_curves_too(name, tmp_path, capsys):
    code = main([name, "--quick", "--recorded-only", "--out", str(tmp_path / "out"),
                 "--runs", str(tmp_path / "runs")])
    assert code == 1
    assert f"no run of {name} is recorded under" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_dataset_and_unwritable_folders_exit_with_one_line(tmp_path, capsys):
    code = main(["collapse", "--quick", "--dataset", "fashion", "--data", str(tmp_path / "none"),
                 "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")])
    assert code == 1
    assert "train-images-idx3-ubyte not found" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    code = main(["balancing", "--quick", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "a-file")])
    assert code == 1
    assert "a-file" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--train-size", "--test-size"])
@pytest.mark.parametrize("value", ["0", "-5", "x"])
def test_bad_subset_sizes_exit_2(option, value, capsys):
    with pytest.raises(SystemExit) as error:
        main(["collapse", "--dataset", "fashion", option, value])
    assert error.value.code == 2
    assert option in capsys.readouterr().err


def test_a_resumed_run_with_other_epochs_is_not_mixed_into_the_tables(tmp_path, capsys):
    common = ["gating", "--dataset", "fashion", "--data", str(_tiny_idx(tmp_path / "idx")), "--train-size", "100",
              "--test-size", "50", "--seeds", "1", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]
    assert main([*common, "--epochs", "1"]) == 0
    before = (tmp_path / "out" / "gating_fashion0k.csv").read_bytes()
    capsys.readouterr()
    assert main([*common, "--epochs", "2"]) == 1
    error = capsys.readouterr().err
    assert "max_epochs 1, this call asks for 2" in error and "gating/fashion-100--gate" in error
    assert (tmp_path / "out" / "gating_fashion0k.csv").read_bytes() == before
    # Tabulating what is recorded still works.
    assert main([*common, "--epochs", "2", "--recorded-only"]) == 0
