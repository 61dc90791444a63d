"""Tests of `python -m pipelines.experiments`: every --quick path, aggregation,
the report and the CLI's error handling."""

from __future__ import annotations

import gzip
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
    return out, codes


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_experiment_writes_csv_and_png(study, name):
    out, codes = study
    assert codes[name] == 0
    table = pd.read_csv(out / f"{name}.csv")
    assert len(table) >= 1
    assert table["test_accuracy"].between(0, 1).all()
    for figure in EXPERIMENTS[name]:
        assert (out / figure).stat().st_size > 1000, figure
    log = pd.read_csv(out / "run_log.csv")
    assert name in set(log["experiment"])


def test_datasets_reports_missing_cifar_and_runs_the_rest(study):
    out, _ = study
    notes = (out / "datasets_notes.txt").read_text()
    assert "CIFAR-10 not found" in notes
    assert set(pd.read_csv(out / "datasets.csv")["dataset"]) == {"digits", "fashion"}


def test_missing_cifar_raises_clear_error(tmp_path):
    with pytest.raises(datasets_lib.DatasetUnavailable, match="CIFAR-10 not found.*data_batch_1"):
        datasets_lib.load_cifar10(tmp_path, None, None)


def test_report_contains_numbers_from_the_csvs(study):
    out, _ = study
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


def test_report_marks_missing_sections(tmp_path):
    text = report_lib.build_report(tmp_path)
    assert "Not run (`python -m pipelines.experiments collapse`)" in text


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
    assert summary.loc["c", "test_accuracy_std"] == 0.0  # one seed: 0, not NaN
    assert summary.loc["a", "seeds"] == 3 and summary.loc["c", "seeds"] == 1
    assert "not_a_column_mean" not in summary.columns


def test_unknown_experiment_exits_2(capsys):
    assert main(["nonsense"]) == 2
    error = capsys.readouterr().err
    assert "unknown experiment 'nonsense'" in error and "collapse" in error

