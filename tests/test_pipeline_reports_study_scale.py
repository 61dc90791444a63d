"""`pipelines.reports.study_scale`: the study-at-scale blocks from per-run
records. Expected numbers are worked out by hand from the records below."""

import json

from pipelines.reports import Records
from pipelines.reports import study_scale

# Test accuracy of (label, size) for seeds 0, 1, 2.
ACCURACIES = {
    ("baseline", 1_000): (0.780, 0.790, 0.800),
    ("n=4 k=1", 1_000): (0.770, 0.790, 0.780),   # gaps -1, 0, -2 pp
    ("baseline", 60_000): (0.880, 0.890, 0.870),
    ("n=4 k=1", 60_000): (0.890, 0.900, 0.880),  # gaps +1, +1, +1 pp
}


def _write_records(root):
    folder = root / study_scale.STUDY / "datasize"
    folder.mkdir(parents=True)
    for (label, size), accuracies in ACCURACIES.items():
        for seed, accuracy in enumerate(accuracies):
            family = "dense" if label == "baseline" else "moe"
            record = {
                "config": {"label": label, "train": {"validation_fraction": 0.15, "batch_size": 64}},
                "seed": seed,
                "command": "python3 /home/u/repo/pipelines/experiments/__main__.py datasize --shard 0/2",
                "machine": {"cpu_count": 2, "processor": "x86_64"},
                "load_average": [2.0, 2.0, 2.0],
                "timings": {"total_s": 360.0},
                "versions": {"keras": "3", "backend": "tensorflow"},
                "metrics": {"dataset": "fashion", "train_size": size, "arch": "mlp", "family": family,
                            "top_k": 0 if family == "dense" else 1, "num_experts": 0 if family == "dense" else 4,
                            "test_accuracy": accuracy},
            }
            (folder / f"{label}-{size}-{seed}.json").write_text(json.dumps(record))
    return Records(root)


def test_datasize_table_gives_median_and_range_and_marks_pending(tmp_path):
    text = study_scale.datasize_table(_write_records(tmp_path))
    assert "| MLP: baseline | 79.00 (78.00-80.00) | pending | pending | 88.00 (87.00-89.00) | pending |" in text
    assert "| MLP: n=4 k=1 | 78.00 (77.00-79.00) | pending | pending | 89.00 (88.00-90.00) | pending |" in text
    assert "| CNN: every model | pending |" in text


def test_gap_is_paired_by_seed_with_a_t_interval(tmp_path):
    text = study_scale.datasize_gap_table(_write_records(tmp_path))
    # 1k gaps -1, 0, -2: mean -1, sd 1, t(0.975, 2) = 4.303 -> +-2.48.
    # 60k gaps +1, +1, +1: no spread.
    # Trend: points (3, -1), (3, 0), (3, -2), (4.778, 1) x 3: slope
    # (mean 60k - mean 1k) / (log10 60000 - 3) = 2 / 1.778 = 1.12.
    assert "| MLP: n=4 k=1 | baseline | -1.00 [-3.48, +1.48] | pending | pending | +1.00 [+1.00, +1.00] |" in text
    assert "+1.12 [" in text


def test_answer_says_whether_the_gap_grows(tmp_path):
    text = study_scale.datasize_answer(_write_records(tmp_path))
    assert "n=4 k=1: -1.00 [-3.48, +1.48] pp at 1k, +1.00 [+1.00, +1.00] pp at 60k" in text
    # The slope's interval: residuals -> stderr; it lies above zero here.
    assert "so the gap grows in MoE's favour" in text
    assert "CNN: pending" in text


def test_commands_sum_the_wall_time_of_the_runs(tmp_path):
    text = study_scale.commands_table(_write_records(tmp_path))
    # 12 runs x 360 s = 1.2 hours.
    assert "| datasize | `python -m pipelines.experiments datasize --shard 0/2` | 12 | 1.20 |" in text
