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


def _conv_record(folder, label, seed, accuracy, **metrics):
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "config": {"label": label}, "seed": seed,
        "metrics": {"dataset": "fashion", "train_size": 60_000, "test_accuracy": accuracy,
                    "params_total": 1000, "epoch_seconds": 100.0 + seed, **metrics},
    }
    (folder / f"{label}-{seed}.json").write_text(json.dumps(record))


def test_conv_table_pairs_each_routing_with_the_datasize_sweeps_plain_cnn(tmp_path):
    study = tmp_path / study_scale.STUDY
    for seed, (plain, pixel) in enumerate([(0.900, 0.905), (0.910, 0.920), (0.920, 0.930)]):
        _conv_record(study / "datasize", "cnn dense head", seed, plain, arch="cnn")
        # Expert loads 6, 2, 2, 2 + seed (of 12 + seed): busiest 2.0, 1.85, 1.71 x the ideal.
        counts = [[3, 1, 0, 0], [3, 1, 2, 2 + seed]]
        _conv_record(study / "conv_experts", "conv experts, pixel routing", seed, pixel, class_expert_nmi=0.1 * seed,
                     class_expert_counts=counts)
    # A 15k plain-CNN run is not the full set's baseline and must be left out.
    _conv_record(study / "datasize", "cnn dense head", 3, 0.5, train_size=15_000)
    text = study_scale.conv_table(Records(tmp_path))
    assert "| cnn dense head | 1,000 | 91.00 (90.00-92.00) | - | 101 (100-102) | - | - |" in text
    # Gaps +0.5, +1, +1 pp: mean 0.833, sd 0.289, t(0.975, 2) 4.303 -> +-0.72.
    assert "| conv experts, pixel routing | 1,000 | 92.00 (90.50-93.00) | +0.83 [+0.12, +1.55] | 101 (100-102) " \
           "| 1.85 (1.71-2.00) | 0.100 (0.000-0.200) |" in text


def test_conv_table_is_pending_without_a_conv_run(tmp_path):
    _conv_record(tmp_path / study_scale.STUDY / "datasize", "cnn dense head", 0, 0.9)
    assert study_scale.conv_table(Records(tmp_path)).startswith("Pending")
