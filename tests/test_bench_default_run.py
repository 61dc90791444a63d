"""`benchmarks/bench_default_run.py --quick`: README's main job at a baseline
commit and at the working tree, each in its own process, on tiny CSVs."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd

from conftest import load_script

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_default_run.py"


def _tiny_csvs(directory, train_rows=60, test_rows=12):
    rng = np.random.default_rng(0)
    directory.mkdir()
    pixels = [f"pixel{i}" for i in range(784)]
    train = pd.DataFrame(rng.integers(0, 256, size=(train_rows, 784)), columns=pixels)
    train.insert(0, "label", np.arange(train_rows) % 10)
    train.to_csv(directory / "train.csv", index=False)
    pd.DataFrame(rng.integers(0, 256, size=(test_rows, 784)), columns=pixels).to_csv(directory / "test.csv", index=False)
    return directory


def test_quick_record_has_both_sides_and_their_ratio(tmp_path):
    data = _tiny_csvs(tmp_path / "data")
    pd.DataFrame({"ImageId": range(1, 13), "Label": [i % 10 for i in range(12)]}).to_csv(
        data / "test_labels.csv", index=False)
    out = tmp_path / "record.json"
    keep = tmp_path / "kept"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--baseline", "HEAD", "--seeds", "4", "--data", str(data),
         "--json", str(out), "--keep", str(keep)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert [r["side"] for r in record["runs"]] == ["baseline", "current"]
    for run in record["runs"]:
        assert run["seed"] == 4 and run["epochs_run"] == 1
        assert run["wall_time_s"] > 0 and run["process_s"] > run["wall_time_s"]
        assert 0 <= run["test_accuracy"] <= 1
    baseline, current = record["runs"]
    assert record["summary"]["training_time_ratio"]["per_seed"] == [
        round(current["wall_time_s"] / baseline["wall_time_s"], 3)]
    # The worktree is gone, and the working tree's run record was kept.
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "baseline" not in worktrees
    kept = json.loads((keep / "cnn-moe3of5-h64-s0-seed4.json").read_text())
    assert kept["seed"] == 4 and kept["wall_time_s"] == current["wall_time_s"]
    with np.load(keep / "cnn-moe3of5-h64-s0-seed4.probs.npz") as probabilities:
        assert probabilities["test"].shape == (12, 10)
    assert "| ratio, seed by seed |" in result.stdout


def test_the_order_alternates_between_seeds(tmp_path, monkeypatch):
    bench = load_script("benchmarks/bench_default_run.py")
    calls = []

    def fake_run(code_dir, data_dir, seed, out_dir, extra):
        calls.append((seed, "baseline" if code_dir != bench.ROOT else "current"))
        return {"seed": seed, "wall_time_s": 1.0, "process_s": 2.0, "epochs_run": 1,
                "validation_accuracy": 0.5, "test_accuracy": 0.5, "load_average": [0, 0, 0]}

    monkeypatch.setattr(bench, "run_once", fake_run)
    monkeypatch.setattr(bench, "_git", lambda *args, **kwargs: "")
    bench.measure("HEAD", tmp_path, [0, 1, 2], [])
    assert calls == [(0, "baseline"), (0, "current"), (1, "current"), (1, "baseline"),
                     (2, "baseline"), (2, "current")]
