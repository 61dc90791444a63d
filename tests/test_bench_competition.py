"""`benchmarks/bench_competition.py --quick`: it runs the pipeline on
competition-layout CSVs (here a small synthetic Fashion-MNIST-like pool
written by `pipelines.fashion_csv --quick`) and writes a complete record."""

import gzip
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pipelines import fashion_csv

from conftest import load_script

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_competition.py"


def _quick_csvs(tmp_path):
    """300 / 200-row CSVs from a synthetic idx pool of 600 random images."""
    rng = np.random.default_rng(3)
    source = tmp_path / "idx"
    source.mkdir()
    for (images_name, labels_name), count in zip(fashion_csv.IDX_FILES, (500, 100)):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), count // 10))
        images = rng.integers(0, 256, size=(count, 784), dtype=np.uint8)
        with gzip.open(source / f"{images_name}.gz", "wb") as handle:
            handle.write(b"".join(v.to_bytes(4, "big") for v in (0x803, count, 28, 28)) + images.tobytes())
        with gzip.open(source / f"{labels_name}.gz", "wb") as handle:
            handle.write(b"".join(v.to_bytes(4, "big") for v in (0x801, count)) + labels.tobytes())
    out = tmp_path / "csv"
    assert fashion_csv.main(["--quick", "--source", str(source), "--out", str(out)]) == 0
    return out


def _run(*arguments):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.run([sys.executable, str(BENCH), *arguments], env=env, capture_output=True,
                             text=True, timeout=600, cwd=ROOT)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-4000:]
    return process.stdout


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_record_has_every_measurement(tmp_path):
    data_dir = _quick_csvs(tmp_path)
    out = tmp_path / "record.json"
    _run("--quick", "--data", str(data_dir), "--json", str(out))
    record = json.loads(out.read_text())

    for key in ("command", "config", "seed", "versions", "machine", "targets", "data", "load", "epoch",
                "accuracy", "grid", "metrics", "timings", "load_average_start", "load_average_end"):
        assert key in record, key
    assert record["grid"] is None and record["metrics"]["grid_wall_s"] is None
    assert record["config"]["quick"] is True and record["seed"] == 0
    assert record["machine"]["cpu_count"] >= 1 and "keras" in record["versions"]

    load = record["load"]
    assert (load["train_rows"], load["test_rows"], load["test_label_rows"]) == (300, 200, 200)
    for key in ("load_s", "train_s", "test_s", "import_s", "peak_rss_gb", "rss_after_import_gb"):
        assert _positive(load[key]), key
    # The peak includes the interpreter and the arrays on top of it.
    assert load["peak_rss_gb"] >= load["rss_after_import_gb"]
    assert load["train_csv_bytes"] == (data_dir / "train.csv").stat().st_size

    epoch = record["epoch"]
    assert epoch["train_rows"] + epoch["validation_rows"] == 300
    moe, plain = epoch["models"]["moe"], epoch["models"]["plain"]
    assert moe["name"].startswith("cnn-moe3of5-h64") and plain["name"] == "cnn-dense-h64"
    for model in (moe, plain):
        assert len(model["epoch_s"]) == epoch["epochs_run"] == 1 + epoch["timed_epochs"] == 2
        assert all(_positive(s) for s in model["epoch_s"]) and _positive(model["median_epoch_s"])
    # MoE routing adds the router and k - 1 experts' worth of active weights.
    assert moe["params_active"] > plain["params_active"] and moe["params_total"] > moe["params_active"]
    assert _positive(epoch["ratio"])
    # The ratio is of the unrounded medians; the shown ones are rounded to 0.01 s.
    m, p = moe["median_epoch_s"], plain["median_epoch_s"]
    assert (m - 0.005) / (p + 0.005) - 0.001 <= epoch["ratio"] <= (m + 0.005) / (p - 0.005) + 0.001
    assert epoch["meets_target"] == (epoch["ratio"] <= 1.15)

    accuracy = record["accuracy"]
    assert accuracy["epochs_run"] == 1 and accuracy["short_run"] is True
    assert accuracy["test_rows"] == 200 and accuracy["data_origin"] == "local"
    assert 0 <= accuracy["test_accuracy"] <= 1
    assert _positive(accuracy["process_wall_s"])

    metrics = record["metrics"]
    assert metrics["epoch_ratio"] == epoch["ratio"] and metrics["load_s"] == load["load_s"]
    assert metrics["test_accuracy"] == accuracy["test_accuracy"]
    assert all(_positive(v) for v in record["timings"].values())

    # --table quotes the record's numbers as they are.
    shown = _run("--table", str(out))
    for value in (f"{load['load_s']} s", f"{load['peak_rss_gb']} GB", f"{moe['median_epoch_s']} s",
                  f"{plain['median_epoch_s']} s", f"{epoch['ratio']}x",
                  f"{100 * accuracy['test_accuracy']:.2f}%", "not run"):
        assert value in shown, value


@pytest.mark.slow
def test_quick_grid_times_six_runs(tmp_path):
    data_dir = _quick_csvs(tmp_path)
    out = tmp_path / "record.json"
    _run("--quick", "--grid", "--skip", "load", "--skip", "epoch", "--skip", "accuracy",
         "--data", str(data_dir), "--grid-out", str(tmp_path / "grid"), "--json", str(out))
    record = json.loads(out.read_text())
    grid = record["grid"]
    assert _positive(grid["wall_s"]) and grid["epochs"] == 1
    assert len(grid["runs"]) == 6 and all(run["epochs_run"] == 1 for run in grid["runs"])
    assert all(0 <= run["test_accuracy"] <= 1 for run in grid["runs"])
    assert grid["ensemble"]["members"] == 6 and 0 <= grid["ensemble"]["test_accuracy"] <= 1
    assert record["metrics"]["grid_wall_s"] == grid["wall_s"]
    assert "load" not in record and "epoch" not in record and "accuracy" not in record
    # --table shows what a partial record holds and marks the rest.
    shown = _run("--table", str(out))
    assert f"{grid['wall_s']} s (1 epochs each)" in shown
    assert shown.count("not run") == 4  # load, peak memory, epoch ratio, accuracy
    assert f"grid ensemble (mean of 6) | {100 * grid['ensemble']['test_accuracy']:.2f}%" in shown


def test_grid_refuses_a_folder_with_runs_in_it(tmp_path):
    bench = load_script("benchmarks/bench_competition.py")
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "cnn-dense-h64.json").write_text("{}")
    with pytest.raises(ValueError, match="not empty"):
        bench.measure_grid(tmp_path, tmp_path / "grid", 1)


def test_missing_csvs_name_the_script(tmp_path):
    process = subprocess.run([sys.executable, str(BENCH), "--data", str(tmp_path), "--quick"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert process.returncode != 0
    assert "python -m pipelines.fashion_csv" in process.stderr
