"""`python -m pipelines.reports`: generated blocks from committed records.

Expected Markdown below is written by hand from the handcrafted records,
not computed with the code under test.
"""

import json
import subprocess
import sys

import pytest

from pipelines import reports

DOC = """# Title

Text before.

<!-- begin: greeting -->
old text
<!-- end: greeting -->

Text after.
"""


@pytest.fixture
def blocks(monkeypatch):
    """An empty registry for the test, restored afterwards."""
    registry = []
    monkeypatch.setattr(reports, "BLOCKS", registry)
    return registry


def _register_greeting(value_file="value.json"):
    @reports.report_block("doc.md", "greeting")
    def greeting(records):
        return f"Hello, {records.json(value_file)['name']}."

    return greeting


def test_markers_are_replaced_and_the_rest_is_kept(tmp_path, blocks):
    (tmp_path / "doc.md").write_text(DOC)
    (tmp_path / "value.json").write_text(json.dumps({"name": "records"}))
    _register_greeting()
    assert reports.main(["--root", str(tmp_path)]) == 0
    assert (tmp_path / "doc.md").read_text() == DOC.replace("old text", "Hello, records.")


def test_rebuilding_is_idempotent(tmp_path, blocks, capsys):
    (tmp_path / "doc.md").write_text(DOC)
    (tmp_path / "value.json").write_text(json.dumps({"name": "records"}))
    _register_greeting()
    reports.main(["--root", str(tmp_path)])
    first = (tmp_path / "doc.md").read_bytes()
    assert reports.main(["--root", str(tmp_path)]) == 0
    assert (tmp_path / "doc.md").read_bytes() == first
    assert reports.main(["--root", str(tmp_path), "--check"]) == 0


def test_check_names_a_stale_block_and_changes_nothing(tmp_path, blocks, capsys):
    (tmp_path / "doc.md").write_text(DOC)
    (tmp_path / "value.json").write_text(json.dumps({"name": "records"}))
    _register_greeting()
    reports.main(["--root", str(tmp_path)])
    (tmp_path / "value.json").write_text(json.dumps({"name": "a newer run"}))
    before = (tmp_path / "doc.md").read_text()
    capsys.readouterr()
    assert reports.main(["--root", str(tmp_path), "--check"]) == 1
    assert "doc.md block 'greeting'" in capsys.readouterr().out
    assert (tmp_path / "doc.md").read_text() == before


def test_a_missing_record_is_an_error_naming_the_file(tmp_path, blocks, capsys):
    (tmp_path / "doc.md").write_text(DOC)
    _register_greeting("benchmarks/results/gone.json")
    assert reports.main(["--root", str(tmp_path)]) == 2
    assert "benchmarks/results/gone.json not found" in capsys.readouterr().err
    assert (tmp_path / "doc.md").read_text() == DOC
    with pytest.raises(reports.RecordError, match="gone.json"):
        reports.Records(tmp_path).json("benchmarks/results/gone.json")


@pytest.mark.parametrize("check", [[], ["--check"]])
def test_a_record_without_a_field_is_an_error_naming_the_block_and_file(tmp_path, blocks, capsys, check):
    (tmp_path / "doc.md").write_text(DOC)
    (tmp_path / "value.json").write_text(json.dumps({"other": "field"}))
    _register_greeting()
    # Exit 2 as for a missing record, not 1 (out of date) and a traceback.
    assert reports.main(["--root", str(tmp_path), *check]) == 2
    error = capsys.readouterr().err
    assert "block 'greeting' of doc.md" in error and "value.json" in error and "KeyError" in error
    assert (tmp_path / "doc.md").read_text() == DOC


def test_missing_markers_are_an_error_naming_the_file(tmp_path, blocks, capsys):
    (tmp_path / "doc.md").write_text("# no markers\n")
    (tmp_path / "value.json").write_text(json.dumps({"name": "records"}))
    _register_greeting()
    assert reports.main(["--root", str(tmp_path)]) == 2
    assert "doc.md has no markers `<!-- begin: greeting -->`" in capsys.readouterr().err


def test_a_block_cannot_be_registered_twice(blocks):
    _register_greeting()
    with pytest.raises(ValueError, match="greeting"):
        _register_greeting()


# Builders on handcrafted records ---------------------------------------------

RUN = {
    "machine": {"platform": "Linux-x86_64", "cpu_count": 2, "device": "CPU", "backend": "tensorflow",
                "python": "3.11.7", "keras": "3.15.1", "tensorflow": "2.21.0", "jax": None},
    "config": {"steps": 10, "repeats": 3},
    "rows": [
        {"layer": "Dense", "dispatch": "baseline", "n": None, "k": 1,
         "fwd_bwd_ms": 11.0, "fwd_bwd_ms_passes": [10.0, 11.0, 12.0], "ms": 22.0, "ms_passes": [20.0, 22.0, 24.0]},
        {"layer": "MoEDense", "dispatch": "sparse", "n": 8, "k": 1, "auto_picks": True,
         "fwd_bwd_ms": 10.0, "fwd_bwd_ms_passes": [10.0, 10.0, 10.0], "ms": 20.0, "ms_passes": [20.0, 20.0, 20.0],
         "fwd_bwd_vs_baseline": 0.909, "fwd_bwd_vs_n8": 1.0, "vs_baseline": 0.909, "vs_n8": 1.0},
        {"layer": "MoEDense", "dispatch": "sparse", "n": 64, "k": 1, "auto_picks": True,
         "fwd_bwd_ms": 14.0, "fwd_bwd_ms_passes": [12.0, 14.0, 16.0], "ms": 24.0, "ms_passes": [24.0, 30.0, 20.0],
         "fwd_bwd_vs_baseline": 1.273, "fwd_bwd_vs_n8": 1.4, "vs_baseline": 1.091, "vs_n8": 1.2},
        {"layer": "pipeline", "dispatch": "cnn-dense-h64", "n": None, "k": None, "ms": 1810.4, "images": 3600},
    ],
}


def test_benchmark_table_quotes_every_pass():
    assert reports.bench_table(RUN) == "\n".join([
        "| layer | dispatch | n | k | fwd+bwd ms | vs_base | vs_n8 | step ms | vs_base | vs_n8 | auto |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        "| Dense | baseline | - | 1 | 11.00 (10.00-12.00) | - | - | 22.00 (20.00-24.00) | - | - |  |",
        "| MoEDense | sparse | 8 | 1 | 10.00 (10.00-10.00) | 0.91 | 1.00 | 20.00 (20.00-20.00) | 0.91 | 1.00 | picked |",
        "| MoEDense | sparse | 64 | 1 | 14.00 (12.00-16.00) | 1.27 | 1.40 | 24.00 (20.00-30.00) | 1.09 | 1.20 | picked |",
        "| pipeline | cnn-dense-h64 | - | - | - | - | - | 1810.40 | - | - |  |",
    ])


def test_imbalance_table_adds_predict_columns_when_the_record_has_them():
    def row(engine, train, predict=None):
        r = {"table": "imbalance", "tokens": 1024, "n": 8, "k": 2, "router": "spread",
             "busiest_over_mean": 1.25, "engine": engine, "train_ms": train}
        if predict is not None:
            r["predict_ms"] = predict
        return r

    engines = {"dense": [90.0, 110.0], "buffers": [40.0, 60.0], "rows": [80.0, 60.0], "auto": [41.0, 59.0]}
    plain = reports.imbalance_table({"rows": [row(e, t) for e, t in engines.items()]})
    assert "predict" not in plain
    # Buffers over rows pass by pass: 40/80 and 60/60, median 0.75.
    assert "| 1024 | 8 | 2 | spread | 1.2 | 100 (90-110) | 50 (40-60) | 70 (60-80) | 50 (41-59) | 0.75 (0.50-1.00) |" in plain
    predicts = {"dense": [9.0], "buffers": [10.0, 30.0], "rows": [40.0, 20.0], "auto": [10.0, 30.0]}
    table = reports.imbalance_table({"rows": [row(e, engines[e], predicts[e]) for e in engines]})
    assert "predict: buffers over rows" in table.splitlines()[0]
    # Predict: buffers 20 (10-30), rows 30 (20-40), ratios 10/40 and 30/20: median 0.875.
    assert table.splitlines()[2].endswith("| 0.75 (0.50-1.00) | 20 (10-30) | 30 (20-40) | 0.88 (0.25-1.50) |")


def test_dispatch_table_adds_the_stacked_einsums_when_the_record_has_them():
    def row(dispatch, train):
        return {"table": "dispatch", "n": 4, "k": 2, "dispatch": dispatch, "train_ms": train}

    times = {"dense": [10.0, 12.0], "sparse": [5.0, 9.0]}
    plain = reports.dispatch_table({"rows": [row(d, t) for d, t in times.items()]})
    assert "stacked" not in plain
    # Dropless over dense pass by pass: 0.5 and 0.75, median 0.625.
    assert "| 2 | 4 | 2 | 11.0 (10.0-12.0) | 7.0 (5.0-9.0) | 0.62 (0.50-0.75) | sparse |" in plain
    times["dense_einsum"] = [20.0, 16.0]
    table = reports.dispatch_table({"rows": [row(d, t) for d, t in times.items()]})
    assert table.splitlines()[0].endswith("| dense as stacked einsums ms | dense over stacked einsums |")
    # Dense over the stacked einsums: 10/20 and 12/16, median 0.625.
    assert table.splitlines()[2].endswith("| sparse | 18.0 (16.0-20.0) | 0.62 (0.50-0.75) |")


def test_targets_table_counts_every_run(tmp_path, monkeypatch):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "t.json").write_text(json.dumps(RUN))
    monkeypatch.setattr(reports, "BENCH_FILES", {"tensorflow": ("t.json",)})
    # Per pass, fwd+bwd: n=64/n=8 = 1.2, 1.4, 1.6; n=64/Dense = 1.2, 1.27, 1.33.
    # Step: n=64/n=8 = 1.2, 1.5, 1.0; n=64/Dense = 1.2, 1.36, 0.83. No k=2 rows.
    assert reports.targets_table(reports.Records(tmp_path)) == "\n".join([
        "| sparse `MoEDense`, n=64 | runs | n=64 / n=8, k=1 | k=2 | n=64 / equal-active Dense, k=1 | k=2 |",
        "|---|---|---|---|---|---|",
        "| target |  | <= 1.3 | <= 1.3 | <= 1.5 | <= 1.5 |",
        "| TensorFlow (XLA), forward+backward | 3 (`t.json`) | 1.40 (1.20-1.60); 1 of 3 within | - "
        "| 1.27 (1.20-1.33); 3 of 3 within | - |",
        "| TensorFlow (XLA), training step | 3 (`t.json`) | 1.20 (1.00-1.50); 2 of 3 within | - "
        "| 1.20 (0.83-1.36); 3 of 3 within | - |",
    ])


PIPELINE_RECORD = {
    "name": "cnn-moe3of5-h64-s0", "model_config": {"moe": [3, 5], "hidden": 64}, "seed": 0,
    "train_accuracy": 0.995, "validation_accuracy": 0.9875, "test_accuracy": 0.99,
    "params_total": 1127594, "params_active": 709418, "epochs_run": 40, "wall_time_s": 95.05,
    "versions": {"backend": "tensorflow"}, "machine": {"cpu_count": 2, "accelerator": None},
}


def test_pipeline_runs_block_from_a_committed_record(tmp_path, blocks):
    folder = tmp_path / "reports" / "records" / "digit_recognizer"
    folder.mkdir(parents=True)
    target = tmp_path / "reports" / "digit_recognizer_grid.md"
    target.write_text("# Grid\n\n<!-- begin: pipeline-runs -->\n<!-- end: pipeline-runs -->\n")
    reports.report_block("reports/digit_recognizer_grid.md", "pipeline-runs")(reports.pipeline_runs)
    reports.main(["--root", str(tmp_path)])
    assert "No run of the pipeline is recorded under `reports/records/digit_recognizer/` yet" in target.read_text()

    (folder / "default").mkdir()
    (folder / "default" / "cnn-moe3of5-h64-s0.json").write_text(json.dumps(PIPELINE_RECORD))
    assert reports.main(["--root", str(tmp_path), "--check"]) == 1
    reports.main(["--root", str(tmp_path)])
    assert target.read_text() == "\n".join([
        "# Grid",
        "",
        "<!-- begin: pipeline-runs -->",
        "| set | run | model | hidden | trunk | seed | train % | validation % | held-out 1,000 % "
        "| params total / active | epochs | time (s) | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        # A record from before `ModelConfig.trunk` existed: the pool trunk.
        "| default | cnn-moe3of5-h64-s0 | MoE(3,5) | 64 | pool | 0 | 99.50 | 98.75 | 99.0 | 1,127,594 / 709,418 "
        "| 40 | 95 | tensorflow, 2 cores, no accelerator |",
        "<!-- end: pipeline-runs -->",
        "",
    ])


def test_router_saturation_table_from_its_csv(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "router_saturation.csv").write_text(
        "model,epoch,train_accuracy,validation_accuracy,logit_std,mixing_weights\n"
        "dense h192,1,0.5316,0.9075,,\n"
        '"MoE(3,5) h64, linear router",3,0.876,0.915,14.96,0.9612 0.0340 0.0048\n')
    assert reports.router_saturation(reports.Records(tmp_path)) == "\n".join([
        "| model | epoch | train acc % | val acc % | router logit std | mean mixing weights (1st / 2nd / 3rd expert) |",
        "|---|---|---|---|---|---|",
        "| dense h192 | 1 | 53.2 | 90.8 | - | - |",
        "| MoE(3,5) h64, linear router | 3 | 87.6 | 91.5 | 14.96 | 0.9612 / 0.0340 / 0.0048 |",
    ])


def test_the_committed_files_are_up_to_date():
    """What CI runs: the repository's blocks match its records, quickly and
    without TensorFlow or Keras."""
    code = ("import sys; from pipelines.reports import main; rc = main(['--check']); "
            "heavy = [m for m in ('tensorflow', 'keras', 'jax', 'pandas') if m in sys.modules]; "
            "print('heavy:', heavy); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], cwd=reports.ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "heavy: []" in result.stdout
