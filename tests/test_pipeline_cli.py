"""End to end: the digit-recognizer CLI on tiny CSVs, bad input, grid resume,
and an upload to the fake Kaggle server."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import cli
from pipelines import data

FAST = ["--epochs", "1", "--batch-size", "16", "--quiet", "--patience", "1"]


def write_tiny_competition(directory, train_rows=60, test_rows=12, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    pixels = [f"pixel{i}" for i in range(784)]
    labels = np.arange(train_rows) % 10
    train = pd.DataFrame(rng.integers(0, 256, size=(train_rows, 784)), columns=pixels)
    train.insert(0, "label", labels)
    train.to_csv(directory / "train.csv", index=False)
    test = pd.DataFrame(rng.integers(0, 256, size=(test_rows, 784)), columns=pixels)
    test.to_csv(directory / "test.csv", index=False)
    return directory


def test_single_run_writes_valid_submission_and_run_record(tmp_path, capsys):
    source = write_tiny_competition(tmp_path / "data")
    out = tmp_path / "subs" / "run.csv"
    code = cli.main(["--moe", "2,3", "--hidden", "8", "--data", str(source), "--out", str(out), *FAST])
    assert code == 0
    assert data.validate_submission(out, expected_rows=12) == 12
    submission = pd.read_csv(out)
    assert list(submission.columns) == ["ImageId", "Label"]
    assert submission["ImageId"].tolist() == list(range(1, 13))
    assert submission["Label"].between(0, 9).all()
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["status"] == "complete"
    assert record["name"] == "cnn-moe2of3-h8-s0"
    assert record["model_config"]["moe"] == [2, 3]
    assert record["seed"] == 0 and record["versions"]["keras"]
    assert len(record["history"]["loss"]) == 1
    assert len(record["expert_usage"]) == 1 and "load_2" in record["expert_usage"][0]
    assert np.asarray(record["class_expert_counts"]["moe"]).shape == (10, 3)
    assert record["params_active"] < record["params_total"]
    for suffix in ("-curves.png", "-load.png", "-routing.png"):
        assert (tmp_path / "subs" / f"run{suffix}").stat().st_size > 0
    summary = capsys.readouterr().out
    assert "active per input" in summary and str(out) in summary


def test_default_run_name_and_mlp_baseline(tmp_path, monkeypatch):
    source = write_tiny_competition(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--arch", "mlp", "--data", str(source), *FAST]) == 0
    assert (tmp_path / "submissions" / "mlp-dense-h64.csv").exists()


@pytest.mark.parametrize(
    "corrupt,needle",
    [
        (lambda d: (d / "train.csv").write_text("label,pixel0\n1,2\n"), "train.csv"),
        (lambda d: (d / "test.csv").write_text(""), "test.csv"),
        (lambda d: os.remove(d / "test.csv"), "test.csv"),
    ],
    ids=["wrong-columns", "empty-test", "missing-test"],
)
def test_bad_input_exits_2_and_keeps_the_existing_submission(tmp_path, capsys, corrupt, needle):
    source = write_tiny_competition(tmp_path / "data")
    corrupt(source)
    out = tmp_path / "good.csv"
    out.write_text("ImageId,Label\n1,7\n")
    code = cli.main(["--moe", "1,2", "--data", str(source), "--out", str(out), *FAST])
    assert code == 2
    assert needle in capsys.readouterr().err
    assert out.read_text() == "ImageId,Label\n1,7\n"
    assert not out.with_suffix(".json").exists()


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--moe", "6,5"])
    assert exit_info.value.code == 2
    assert "K <= N" in capsys.readouterr().err


def test_ema_flag_takes_an_optional_momentum(capsys):
    def ema(*flags):
        return cli._configs_from_args(cli._parser().parse_args(["train", *flags]))[1].ema

    assert ema() is None
    assert ema("--ema") == cli.DEFAULT_EMA_MOMENTUM
    assert ema("--ema", "0.995") == 0.995
    with pytest.raises(SystemExit) as exit_info:
        ema("--ema", "1")
    assert exit_info.value.code == 2
    assert "momentum in (0, 1)" in capsys.readouterr().err


def test_grid_trains_each_config_once_and_resumes(tmp_path, monkeypatch, capsys):
    source = write_tiny_competition(tmp_path / "data")
    monkeypatch.setattr(cli, "GRID", (((1, 2), 4), (None, 64)))
    out_dir = tmp_path / "grid"
    args = ["--grid", "--arch", "mlp", "--data", str(source), "--out", str(out_dir), *FAST]
    assert cli.main(args) == 0
    records = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.json")}
    assert set(records) == {"mlp-moe1of2-h4-s0.json", "mlp-dense-h64.json", "grid-ensemble.json"}
    table = pd.read_csv(out_dir / "grid-results.csv")
    assert table["Model"].tolist() == ["MoE(1,2)", "Dense baseline", "Ensemble (mean of 2)"]
    assert {"Training accuracy", "Validation accuracy", "Public Score", "Score Difference",
            "Params (total)", "Params (active)", "Time (s)"} <= set(table.columns)
    assert "| Model |" in (out_dir / "grid-results.md").read_text()
    capsys.readouterr()

    # Simulate an interruption: the second config's record is lost.
    (out_dir / "mlp-dense-h64.json").unlink()
    assert cli.main(args) == 0
    output = capsys.readouterr().out
    assert "mlp-moe1of2-h4-s0: finished earlier, not retrained" in output
    assert "training mlp-dense-h64" in output
    assert (out_dir / "mlp-moe1of2-h4-s0.json").stat().st_mtime_ns == records["mlp-moe1of2-h4-s0.json"]


def test_resume_takes_a_field_missing_from_an_older_record_as_its_default():
    from dataclasses import asdict

    from pipelines.train import TrainConfig

    recorded = json.loads(json.dumps(asdict(TrainConfig())))
    del recorded["ema"]  # a record written before the field existed
    assert cli._same_config(recorded, TrainConfig())
    assert not cli._same_config(recorded, TrainConfig(ema=0.99))
    assert not cli._same_config({**recorded, "epochs": 31}, TrainConfig())
    assert not cli._same_config(None, TrainConfig())


def test_submit_flag_uploads_and_records_public_score(tmp_path, kaggle_server):
    source = write_tiny_competition(tmp_path / "data")
    out = tmp_path / "run.csv"
    code = cli.main(["--arch", "mlp", "--moe", "1,2", "--data", str(source), "--out", str(out),
                     "--submit", "--message", "tiny run", *FAST])
    assert code == 0
    assert kaggle_server.uploaded == [out.read_bytes()]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["kaggle"]["status"] == "COMPLETE"
    assert record["kaggle"]["public_score"] == pytest.approx(0.98765)
    assert record["kaggle"]["message"] == "tiny run"


def test_submit_failure_keeps_files_and_prints_retry_command(tmp_path, kaggle_server, capsys):
    from kaggle_fake_server import Fault

    source = write_tiny_competition(tmp_path / "data")
    out = tmp_path / "run.csv"
    kaggle_server.script("GetSubmissionLimits", Fault(status=401, message="Unauthorized"))
    code = cli.main(["--arch", "mlp", "--data", str(source), "--out", str(out), "--submit", *FAST])
    assert code == 1
    err = capsys.readouterr().err
    assert "kaggle competitions submit -c digit-recognizer -f" in err
    assert out.exists() and out.with_suffix(".json").exists()


def test_submit_and_submissions_commands(tmp_path, kaggle_server, capsys):
    submission = data.write_submission(tmp_path / "run.csv", [7, 2, 1])
    assert cli.main(["submit", str(submission), "-m", "by hand", "--data", str(tmp_path / "none")]) == 0
    assert "Kaggle public score for" in capsys.readouterr().out
    assert kaggle_server.uploaded == [submission.read_bytes()]
    assert cli.main(["submissions"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["ref", "date", "file", "status", "score", "description"]
    assert "1001" in table[2] and "0.98765" in table[2] and "by hand" in table[2]


@pytest.mark.parametrize("content", [None, "[1, 2]"])
def test_submit_refuses_a_record_it_cannot_store_the_score_in_before_uploading(
        tmp_path, kaggle_server, capsys, content):
    submission = data.write_submission(tmp_path / "run.csv", [7, 2, 1])
    record = tmp_path / "missing" / "rec.json" if content is None else tmp_path / "rec.json"
    if content is not None:
        record.write_text(content)
    code = cli.main(["submit", str(submission), "--data", str(tmp_path / "none"), "--record", str(record)])
    assert code == 2
    assert "--record" in capsys.readouterr().err
    assert kaggle_server.uploaded == []


def test_distribute_data_runs_under_mirrored_strategy(tmp_path):
    """One CPU replica is enough to build, train and predict in the scope;
    MoE(2,8) runs the dropless engine (n / k = 4), whose rows are split by
    expert inside the replica's graph."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("MirroredStrategy is the TensorFlow path")
    source = write_tiny_competition(tmp_path / "data")
    out = tmp_path / "run.csv"
    code = cli.main(["--arch", "mlp", "--moe", "2,8", "--distribute", "data",
                     "--data", str(source), "--out", str(out), *FAST])
    assert code == 0
    assert json.loads(out.with_suffix(".json").read_text())["train_config"]["distribute"] == "data"


def test_distribute_experts_needs_jax(tmp_path, capsys):
    import keras

    if keras.backend.backend() == "jax":
        pytest.skip("checks the message on other backends")
    source = write_tiny_competition(tmp_path / "data")
    code = cli.main(["--moe", "1,2", "--distribute", "experts", "--data", str(source),
                     "--out", str(tmp_path / "x.csv"), *FAST])
    assert code == 2
    assert "KERAS_BACKEND=jax" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_kaggle_only_commands_do_not_import_keras():
    import subprocess
    import sys

    code = "import sys, pipelines.cli; print('keras' in sys.modules, 'tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_train_is_the_default_command(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_run_train", lambda args: seen.append(vars(args)) or 0)
    assert cli.main(["--moe", "3,5", "--hidden", "64"]) == 0
    assert cli.main(["train", "--moe", "3,5", "--hidden", "64"]) == 0
    assert cli.main([]) == 0
    assert seen[0] == seen[1]
    assert (seen[0]["command"], seen[0]["moe"], seen[0]["hidden"], seen[0]["grid"]) == ("train", (3, 5), 64, False)
    assert (seen[2]["moe"], seen[2]["hidden"]) == (None, 64)


def test_subcommands_parse_their_own_arguments(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(cli, "_run_submit", lambda args: seen.append(args) or 0)
    assert cli.main(["submit", str(tmp_path / "a.csv"), "-m", "hello", "--wait", "3"]) == 0
    assert (seen[0].file, seen[0].message, seen[0].wait) == (tmp_path / "a.csv", "hello", 3.0)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["submit", "a.csv", "--moe", "3,5"])  # a train option
    assert exit_info.value.code == 2


def test_download_that_is_not_a_zip_is_one_line_and_changes_nothing(tmp_path, kaggle_server, capsys):
    source = tmp_path / "data"
    source.mkdir()
    (source / "sample_submission.csv").write_text("ImageId,Label\n1,0\n")
    kaggle_server.data_zip = b"not a zip archive"
    code = cli.main(["--moe", "1,2", "--data", str(source), "--out", str(tmp_path / "x.csv"), *FAST])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not a valid zip archive" in err[0]
    assert "kaggle competitions download -c digit-recognizer" in err[0]
    assert os.listdir(source) == ["sample_submission.csv"]
    assert (source / "sample_submission.csv").read_text() == "ImageId,Label\n1,0\n"
    assert not (tmp_path / "x.csv").exists()


def test_interrupted_grid_exits_130_and_resumes(tmp_path, monkeypatch, capsys):
    from pipelines import train

    source = write_tiny_competition(tmp_path / "data")
    monkeypatch.setattr(cli, "GRID", (((1, 2), 4), (None, 64)))
    out_dir = tmp_path / "grid"
    args = ["--grid", "--arch", "mlp", "--data", str(source), "--out", str(out_dir), *FAST]
    real_train_run = train.train_run

    def interrupted_on_the_second(model_config, *rest, **kwargs):
        if model_config.moe is None:
            raise KeyboardInterrupt
        return real_train_run(model_config, *rest, **kwargs)

    monkeypatch.setattr(train, "train_run", interrupted_on_the_second)
    assert cli.main(args) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted"]
    assert sorted(p.name for p in out_dir.iterdir() if p.suffix in (".csv", ".json", ".md", ".npz", ".tmp")) == [
        "mlp-moe1of2-h4-s0.csv", "mlp-moe1of2-h4-s0.json", "mlp-moe1of2-h4-s0.probs.npz"]
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]
    finished = (out_dir / "mlp-moe1of2-h4-s0.json").stat().st_mtime_ns

    monkeypatch.setattr(train, "train_run", real_train_run)
    assert cli.main(args) == 0
    output = capsys.readouterr().out
    assert "mlp-moe1of2-h4-s0: finished earlier, not retrained" in output and "training mlp-dense-h64" in output
    assert (out_dir / "mlp-moe1of2-h4-s0.json").stat().st_mtime_ns == finished
    assert pd.read_csv(out_dir / "grid-results.csv")["Model"].tolist() == [
        "MoE(1,2)", "Dense baseline", "Ensemble (mean of 2)"]


def test_interrupted_wait_for_the_score_keeps_the_ref(tmp_path, kaggle_server, monkeypatch, capsys):
    import argparse
    import importlib
    import time
    import types

    # `pipelines.kaggle.submit` is also the function the package exports.
    submit_module = importlib.import_module("pipelines.kaggle.submit")

    submission = data.write_submission(tmp_path / "run.csv", [7, 2, 1])
    record_path = submission.with_suffix(".json")
    record_path.write_text(json.dumps({"status": "complete", "data": {"test_rows": 3}}))
    kaggle_server.pending_polls = 10**6

    def ctrl_c(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(submit_module, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=ctrl_c))
    # --data: no test.csv to check the rows against, whatever the checkout's
    # data/ holds after README's first command.
    assert cli.main(["submit", str(submission), "-m", "tiny", "--wait", "60",
                     "--data", str(tmp_path / "none")]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted"]
    kept = json.loads(record_path.read_text())
    assert (kept["kaggle"]["ref"], kept["kaggle"]["status"]) == (1001, "PENDING")
    assert kept["data"] == {"test_rows": 3}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # Resumed (as the grid does), the recorded submission is waited for, not made again.
    monkeypatch.setattr(submit_module, "time", time)
    kaggle_server.pending_polls = 0
    result = cli._submit_run(argparse.Namespace(wait=5.0, message=None), None, None, submission, record_path)
    assert (result.ref, result.status) == (1001, "COMPLETE")
    assert len(kaggle_server.submissions) == 1
    assert json.loads(record_path.read_text())["kaggle"]["public_score"] == pytest.approx(0.98765)


# Seeds, new flags --------------------------------------------------------------


@pytest.mark.parametrize("seed", ["-1", "1.5", "seven", str(2**32)])
def test_a_bad_seed_is_a_clear_argparse_error(seed, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--seed", seed])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --seed: A seed must be" in err and "parse_seed" not in err


def test_new_training_flags_reach_the_train_config(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_run_train", lambda args: seen.append(args) or 0)
    assert cli.main(["--seed", "007"]) == 0
    assert cli.main(["--deterministic", "--no-tta", "--pseudo-label", "--ensemble", "3"]) == 0
    assert cli.main(["--pseudo-label", "0.9"]) == 0
    _, plain = cli._configs_from_args(seen[0])
    assert plain.seed == 7 and type(plain.seed) is int
    # TTA is on unless turned off.
    assert (plain.deterministic, plain.tta, plain.pseudo_label, seen[0].ensemble) == (False, True, None, None)
    _, everything = cli._configs_from_args(seen[1])
    assert (everything.deterministic, everything.tta, everything.pseudo_label) == (True, False, 0.99)
    assert seen[1].ensemble == 3
    assert cli._configs_from_args(seen[2])[1].pseudo_label == 0.9
    assert cli._configs_from_args(seen[0])[0].elastic == 0.0
    assert cli.main(["--elastic", "34"]) == 0
    assert cli._configs_from_args(seen[3])[0].elastic == 34.0


@pytest.mark.parametrize("argv,needle", [
    (["--pseudo-label", "1.5"], "threshold in (0, 1]"),
    (["--ensemble", "0"], "at least 1"),
    (["--elastic", "-2"], "pixels of at least 0"),
    (["--elastic", "nan"], "pixels of at least 0"),
    (["--grid", "--ensemble", "2"], "not allowed with argument"),
    (["ensemble"], "RUN_JSON"),
])
def test_bad_ensemble_and_pseudo_label_arguments_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err


# Ensembles ---------------------------------------------------------------------


def _labels(path):
    return pd.read_csv(path)["Label"].to_numpy()


def _mean_labels(*npz_paths):
    """The ensemble's labels, from the members' saved probabilities."""
    from pipelines import ensemble

    return ensemble.labels_of(np.mean([ensemble.load_probabilities(p)["test"].astype(np.float64)
                                       for p in npz_paths], axis=0))


def test_seed_ensemble_bags_its_members_and_rebuilds_without_training(tmp_path, monkeypatch, capsys):
    from pipelines import train

    source = write_tiny_competition(tmp_path / "data", test_rows=20)
    out = tmp_path / "ens" / "bag.csv"
    args = ["--arch", "mlp", "--moe", "1,2", "--hidden", "4", "--seed", "5", "--ensemble", "2",
            "--data", str(source), "--out", str(out), *FAST]
    assert cli.main(args) == 0
    members = [tmp_path / "ens" / f"mlp-moe1of2-h4-s0-seed{seed}" for seed in (5, 6)]
    records = [json.loads(m.with_suffix(".json").read_text()) for m in members]
    assert [r["seed"] for r in records] == [5, 6]
    saved = [np.load(m.with_suffix(".probs.npz")) for m in members]
    # Bagging: each member held out its own validation rows.
    assert set(saved[0]["validation_index"].tolist()) != set(saved[1]["validation_index"].tolist())
    np.testing.assert_array_equal(_labels(out), _mean_labels(*(m.with_suffix(".probs.npz") for m in members)))
    assert data.validate_submission(out, expected_rows=20) == 20
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["members"] == [str(m.with_suffix(".json")) for m in members]
    assert record["member_seeds"] == [5, 6]
    assert record["validation_rows"] == len(set(saved[0]["validation_index"].tolist())
                                            | set(saved[1]["validation_index"].tolist()))
    capsys.readouterr()

    # Resumed: both members are kept, and the averaged file comes out the same.
    first_bytes = out.read_bytes()
    assert cli.main(args) == 0
    assert capsys.readouterr().out.count("finished earlier, not retrained") == 2
    assert out.read_bytes() == first_bytes

    # Rebuilt from the records alone, with training made impossible.
    def no_training(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(train, "fit", no_training)
    rebuilt = tmp_path / "rebuilt.csv"
    assert cli.main(["ensemble", *(str(m.with_suffix(".json")) for m in members), "--out", str(rebuilt)]) == 0
    assert rebuilt.read_bytes() == first_bytes


def test_grid_writes_its_ensemble_with_a_held_out_score(tmp_path, monkeypatch):
    source = write_tiny_competition(tmp_path / "data", test_rows=20)
    truth = np.arange(20) % 10
    data.write_submission(source / "test_labels.csv", truth)
    monkeypatch.setattr(cli, "GRID", (((1, 2), 4), (None, 64)))
    out_dir = tmp_path / "grid"
    assert cli.main(["--grid", "--arch", "mlp", "--data", str(source), "--out", str(out_dir), *FAST]) == 0
    members = ("mlp-moe1of2-h4-s0", "mlp-dense-h64")
    expected = _mean_labels(*(out_dir / f"{m}.probs.npz" for m in members))
    np.testing.assert_array_equal(_labels(out_dir / "grid-ensemble.csv"), expected)
    table = pd.read_csv(out_dir / "grid-results.csv")
    row = table.iloc[-1]
    assert row["Model"] == "Ensemble (mean of 2)"
    assert row["Held-out test accuracy"] == pytest.approx(round(100 * (expected == truth).mean(), 2))
    baseline = table.iloc[1]
    assert row["Held-out difference"] == pytest.approx(
        round(100 * (expected == truth).mean() - baseline["Held-out test accuracy"], 2), abs=0.011)
    assert row["Params (total)"] == table["Params (total)"].iloc[:2].sum()
    assert row["Submission"] == str(out_dir / "grid-ensemble.csv")
    # Grid members share one seed, so one validation split: the ensemble's is theirs.
    record = json.loads((out_dir / "grid-ensemble.json").read_text())
    assert record["validation_rows"] == json.loads((out_dir / f"{members[0]}.json").read_text())["data"]["validation_rows"]
    assert row["Validation accuracy"] == pytest.approx(round(100 * record["validation_accuracy"], 2))


# Repeatable runs ---------------------------------------------------------------


def test_deterministic_runs_repeat_their_submission_bytes_for_a_seed(tmp_path):
    """The cnn with augmentation and dropout: every random layer in play."""
    source = write_tiny_competition(tmp_path / "data", test_rows=40)
    outputs = {}
    for name, seed in (("first", "3"), ("again", "3"), ("other", "4")):
        out = tmp_path / f"{name}.csv"
        assert cli.main(["--moe", "2,3", "--hidden", "8", "--deterministic", "--seed", seed,
                         "--data", str(source), "--out", str(out), *FAST]) == 0
        outputs[name] = (out.read_bytes(), np.load(out.with_suffix(".probs.npz"))["test"])
    assert outputs["first"][0] == outputs["again"][0]
    np.testing.assert_array_equal(outputs["first"][1], outputs["again"][1])
    assert outputs["first"][0] != outputs["other"][0]
    assert json.loads((tmp_path / "first.json").read_text())["train_config"]["deterministic"] is True


@pytest.mark.parametrize("blocker", ["file", "folder"])
def test_unwritable_out_is_one_line_before_training(tmp_path, monkeypatch, capsys, blocker):
    # Found after training used to be a traceback (FileExistsError /
    # IsADirectoryError) that threw the trained model away.
    import pipelines.train

    monkeypatch.setattr(pipelines.train, "train_run", lambda *a, **k: pytest.fail("trained"))
    if blocker == "file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "s.csv"
    else:
        out = tmp_path / "adir"
        out.mkdir()
    assert cli.main(["--arch", "mlp", "--epochs", "1", "--data", str(tmp_path / "data"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err


def test_submit_flag_refuses_the_embedded_sample_and_fails_on_an_error_score(tmp_path, kaggle_server, capsys):
    # An embedded-sample run predicts 1,000 rows: Kaggle scores that as ERROR
    # ("Submission must have 28000 rows") and the day's quota is spent.
    source = write_tiny_competition(tmp_path / "data")
    (source / ".embedded").write_text("marker\n")
    out = tmp_path / "run.csv"
    code = cli.main(["--arch", "mlp", "--data", str(source), "--out", str(out), "--submit", *FAST])
    assert code == 1 and kaggle_server.uploaded == []
    assert "embedded" in capsys.readouterr().err
    # A real upload that Kaggle scores as ERROR is a failure too.
    (source / ".embedded").unlink()
    kaggle_server.final_status = "ERROR"
    code = cli.main(["--arch", "mlp", "--data", str(source), "--out", str(out), "--submit", *FAST])
    assert code == 1 and len(kaggle_server.uploaded) == 1


@pytest.mark.parametrize("lr", ["nan", "-1", "0", "inf"])
def test_bad_learning_rate_is_an_argparse_error(lr, capsys):
    # --lr nan trained to NaN and wrote an all-zeros submission with exit 0.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--lr", lr])
    assert exit_info.value.code == 2
    assert "--lr" in capsys.readouterr().err


def test_a_diverged_run_writes_no_submission(tmp_path, capsys):
    # argmax of NaN probabilities is class 0: a diverged model used to write
    # a well-formed all-zeros submission and exit 0.
    source = write_tiny_competition(tmp_path / "data")
    out = tmp_path / "run.csv"
    out.write_text("a good earlier submission\n")
    code = cli.main(["--arch", "mlp", "--lr", "1e30", "--data", str(source), "--out", str(out), *FAST])
    assert code == 2
    assert "diverged" in capsys.readouterr().err
    assert out.read_text() == "a good earlier submission\n"


def test_a_run_of_another_seed_keeps_the_first_runs_files(tmp_path, monkeypatch):
    # Both runs were named by the config alone: --seed 1 replaced seed 0's
    # submission and record, Kaggle score included.
    import pipelines.train

    written = []

    def fake_train_run(model_config, train_config, source, submission):
        written.append(Path(submission).name)
        raise KeyboardInterrupt  # stop before anything is trained or written

    monkeypatch.setattr(pipelines.train, "train_run", fake_train_run)
    monkeypatch.setattr(cli, "SUBMISSIONS_DIR", tmp_path / "submissions")
    source = write_tiny_competition(tmp_path / "data")
    for seed in ("0", "1"):
        assert cli.main(["--arch", "mlp", "--seed", seed, "--data", str(source), *FAST]) == 130
    assert written == ["mlp-dense-h64.csv", "mlp-dense-h64-seed1.csv"]
