"""Tests for pipelines.kaggle: the real ``kaggle`` client against a local fake Kaggle API.

The ``kaggle_server`` fixture (tests/conftest.py) routes the official client,
in-process and as a CLI subprocess, to ``tests/kaggle_fake_server.py`` on
127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import kaggle as pk
from pipelines.data import DataError, write_submission

try:
    from tests.kaggle_fake_server import TINY_TEST, TINY_TRAIN, Fault, make_zip
except ImportError:  # tests/ is not a package
    from kaggle_fake_server import TINY_TEST, TINY_TRAIN, Fault, make_zip

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = {"backoff": 0.01, "poll_interval": 0.01, "log": lambda _msg: None}
MESSAGE = "moe-dense run 7: 'quoted' & spaced"


@pytest.fixture
def submission_file(tmp_path: Path) -> Path:
    return write_submission(tmp_path / "out dir" / "submission.csv", [7, 2, 1, 0, 4])


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def _expect_submit_error(path: Path, **kwargs) -> pk.KaggleError:
    """Run submit() expecting a KaggleError; check what every upload failure must satisfy."""
    before = _snapshot(path)
    with pytest.raises(pk.KaggleError) as info:
        pk.submit(path, MESSAGE, **{**FAST, **kwargs})
    err = info.value
    assert err.retry_command == pk.submit_command(path, MESSAGE)
    assert _snapshot(path) == before, "the local submission file must never change"
    assert sorted(os.listdir(path.parent)) == [path.name]
    return err


# --------------------------------------------------------------------------
# Import hygiene and credentials
# --------------------------------------------------------------------------


def test_import_and_no_credentials_never_import_kaggle(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO_ROOT), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    code = (
        "import sys\n"
        "import pipelines.kaggle as pk\n"
        "assert 'kaggle' not in sys.modules and 'kagglesdk' not in sys.modules, 'import'\n"
        "assert pk.has_credentials() is False\n"
        f"assert pk.download_competition_data({str(tmp_path / 'data')!r}) is False\n"
        "assert 'kaggle' not in sys.modules and 'kagglesdk' not in sys.modules, 'download'\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert not (tmp_path / "home" / ".kaggle").exists()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Kaggle credentials anywhere; returns the fake HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for name in list(os.environ):
        if name.startswith("KAGGLE_"):
            monkeypatch.delenv(name)
    return home


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


KAGGLE_JSON = json.dumps({"username": "u", "key": "k"})


@pytest.mark.parametrize(
    "setup, expected",
    [
        ({}, False),
        ({"env": {"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}}, True),
        ({"env": {"KAGGLE_USERNAME": "u"}}, False),
        ({"env": {"KAGGLE_USERNAME": "u", "KAGGLE_KEY": ""}}, False),
        ({"env": {"KAGGLE_API_TOKEN": "KGAT_0123456789abcdef"}}, True),
        ({"files": {"cfg/kaggle.json": KAGGLE_JSON}, "config_dir": "cfg"}, True),
        # KAGGLE_CONFIG_DIR wins: ~/.kaggle/kaggle.json is then not read.
        ({"files": {".kaggle/kaggle.json": KAGGLE_JSON}, "config_dir": "cfg"}, False),
        ({"files": {".kaggle/kaggle.json": KAGGLE_JSON}}, True),
        ({"files": {".config/kaggle/kaggle.json": KAGGLE_JSON}}, True),  # XDG fallback
        ({"files": {".kaggle/kaggle.json": "{not json"}}, False),
        ({"files": {".kaggle/kaggle.json": json.dumps({"username": "u"})}, "env": {"KAGGLE_KEY": "k"}}, True),
        ({"files": {".kaggle/access_token": "KGAT_abc\n"}}, True),
        ({"files": {".kaggle/access_token.txt": "KGAT_abc"}}, True),
        ({"files": {".kaggle/access_token": "  \n"}}, False),
        ({"files": {".kaggle/credentials.json": json.dumps({"refresh_token": "r"})}}, True),
        ({"files": {".kaggle/credentials.json": json.dumps({"username": "u"})}}, False),
    ],
    ids=[
        "nothing", "env-user-key", "env-user-only", "env-empty-key", "env-api-token", "config-dir-json",
        "config-dir-overrides-home", "home-json", "xdg-json", "broken-json", "json-user-env-key",
        "access-token-file", "access-token-txt", "empty-access-token", "oauth-credentials", "oauth-no-refresh",
    ],
)
def test_has_credentials(clean_env: Path, monkeypatch: pytest.MonkeyPatch, setup: dict, expected: bool) -> None:
    for rel, text in setup.get("files", {}).items():
        _write(clean_env / rel, text)
    if "config_dir" in setup:
        (clean_env / setup["config_dir"]).mkdir(exist_ok=True)
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(clean_env / setup["config_dir"]))
    for name, value in setup.get("env", {}).items():
        monkeypatch.setenv(name, value)
    assert pk.has_credentials() is expected


def test_api_token_as_file_path(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = clean_env / "token.txt"
    token_file.write_text("")
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(token_file))
    assert pk.has_credentials() is False  # the client reads the (empty) file
    token_file.write_text("KGAT_abc")
    assert pk.has_credentials() is True


# --------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------


def test_download_happy_path(kaggle_server, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert pk.download_competition_data(data_dir, log=lambda _m: None) is True
    assert (data_dir / "train.csv").read_text() == TINY_TRAIN
    assert (data_dir / "test.csv").read_text() == TINY_TEST
    assert (data_dir / "sample_submission.csv").is_file()
    assert sorted(os.listdir(data_dir)) == ["sample_submission.csv", "test.csv", "train.csv"]  # no archive
    call = kaggle_server.requests_to("DownloadDataFiles")[0]
    assert call.method == "POST" and call.json() == {"competitionName": "digit-recognizer"}
    assert call.headers["Authorization"].startswith("Basic ")
    assert kaggle_server.endpoints == ["DownloadDataFiles", "data"]


def test_download_retries_server_errors(kaggle_server, tmp_path: Path) -> None:
    kaggle_server.script("DownloadDataFiles", Fault(503, "busy"), Fault(503, "busy"))
    assert pk.download_competition_data(tmp_path / "d", backoff=0.01, log=lambda _m: None)
    assert kaggle_server.endpoints.count("DownloadDataFiles") == 3


def test_download_archive_without_test_csv(kaggle_server, tmp_path: Path) -> None:
    kaggle_server.data_zip = make_zip({"train.csv": TINY_TRAIN})
    with pytest.raises(pk.KaggleError, match=r"test\.csv is missing") as info:
        pk.download_competition_data(tmp_path / "d", log=lambda _m: None)
    assert info.value.kind == "data"
    assert info.value.retry_command == shlex.join(
        ["kaggle", "competitions", "download", "-c", "digit-recognizer", "-p", str(tmp_path / "d")]
    )


def test_download_rules_not_accepted(kaggle_server, tmp_path: Path) -> None:
    kaggle_server.script(
        "DownloadDataFiles",
        Fault(403, "You must accept this competition's rules before you'll be able to download files."),
    )
    with pytest.raises(pk.KaggleError, match="rules have not been accepted") as info:
        pk.download_competition_data(tmp_path / "d", log=lambda _m: None)
    assert info.value.kind == "rules" and pk.RULES_URL in str(info.value)
    assert kaggle_server.endpoints == ["DownloadDataFiles"]  # 4xx is not retried


def test_download_archive_cannot_write_outside_data_dir(kaggle_server, tmp_path: Path) -> None:
    kaggle_server.data_zip = make_zip({"../escaped.csv": "x", "train.csv": TINY_TRAIN, "test.csv": TINY_TEST})
    data_dir = tmp_path / "d"
    assert pk.download_competition_data(data_dir, log=lambda _m: None) is True
    assert not list(tmp_path.rglob("escaped.csv"))
    assert sorted(os.listdir(data_dir)) == ["test.csv", "train.csv"]


def test_download_not_a_zip_leaves_data_dir_as_it_was(kaggle_server, tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / "train.csv").write_text("good train\n")
    (data_dir / "sample_submission.csv").write_text("good sample\n")
    before = {p.name: _snapshot(p) for p in data_dir.iterdir()}
    kaggle_server.data_zip = b"<html>Service temporarily unavailable</html>"
    with pytest.raises(pk.KaggleError, match="not a valid zip archive") as info:
        pk.download_competition_data(data_dir, log=lambda _m: None)
    assert info.value.kind == "data" and "\n" not in str(info.value)
    assert info.value.retry_command == pk.download_command(data_dir)
    assert {p.name: _snapshot(p) for p in data_dir.iterdir()} == before  # no archive, no staging dir


def test_download_replaces_csvs_only_when_complete(kaggle_server, tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / "test.csv").write_text("old test\n")
    kaggle_server.data_zip = make_zip({"train.csv": TINY_TRAIN})
    with pytest.raises(pk.KaggleError, match=r"test\.csv is missing"):
        pk.download_competition_data(data_dir, log=lambda _m: None)
    assert sorted(os.listdir(data_dir)) == ["test.csv"]
    assert (data_dir / "test.csv").read_text() == "old test\n"


def test_download_on_a_flaky_server(kaggle_server, tmp_path: Path) -> None:
    # The client follows the redirect to the archive within the one
    # DownloadDataFiles request, so an attempt succeeds only when both hops
    # are served: with two 503s before each answer that is the ninth.
    kaggle_server.flaky = 2
    assert pk.download_competition_data(tmp_path / "d", retries=8, backoff=0.001, log=lambda _m: None)
    assert (tmp_path / "d" / "train.csv").read_text() == TINY_TRAIN
    assert kaggle_server.endpoints.count("DownloadDataFiles") == 9


# --------------------------------------------------------------------------
# Submit: happy path
# --------------------------------------------------------------------------


def test_submit_happy_path_and_record(kaggle_server, submission_file: Path, tmp_path: Path) -> None:
    kaggle_server.pending_polls = 2
    before = _snapshot(submission_file)
    result = pk.submit(submission_file, MESSAGE, expected_rows=5, **FAST)

    assert kaggle_server.uploaded == [submission_file.read_bytes()]
    assert kaggle_server.endpoints == [
        "GetSubmissionLimits", "StartSubmissionUpload", "upload", "CreateSubmission",
        "GetSubmission", "GetSubmission", "GetSubmission",
    ]
    start = kaggle_server.requests_to("StartSubmissionUpload")[0].json()
    assert start["fileName"] == "submission.csv" and start["contentLength"] == len(before[0])
    create = kaggle_server.requests_to("CreateSubmission")[0].json()
    assert create["competitionName"] == "digit-recognizer" and create["submissionDescription"] == MESSAGE
    assert (result.ref, result.status, result.public_score) == (1001, "COMPLETE", pytest.approx(0.98765))
    assert result.error_description is None and result.message == MESSAGE
    assert result.file == str(submission_file)
    assert _snapshot(submission_file) == before

    record = tmp_path / "run.json"
    record.write_text(json.dumps({"model": "moe_dense", "val_accuracy": 0.97, "kaggle": {"stale": True}}))
    pk.record_submission(record, result)
    data = json.loads(record.read_text())
    assert data["model"] == "moe_dense" and data["val_accuracy"] == 0.97
    assert {k: data["kaggle"][k] for k in ("ref", "status", "public_score", "error_description", "message")} == {
        "ref": 1001, "status": "COMPLETE", "public_score": 0.98765, "error_description": None, "message": MESSAGE,
    }
    assert data["kaggle"]["submitted_at"] == result.submitted_at and "stale" not in data["kaggle"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run.json")) == []


def test_record_submission_needs_existing_object(tmp_path: Path) -> None:
    result = pk.SubmissionResult(1, "COMPLETE", 0.9, None, "m", "f.csv")
    with pytest.raises(FileNotFoundError):
        pk.record_submission(tmp_path / "missing.json", result)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="JSON object"):
        pk.record_submission(tmp_path / "list.json", result)
    assert (tmp_path / "list.json").read_text() == "[]"


def test_list_submissions_and_limits(kaggle_server, submission_file: Path) -> None:
    pk.submit(submission_file, MESSAGE, **FAST)
    rows = pk.list_submissions()
    assert [(r["ref"], r["file_name"], r["description"], r["status"], r["public_score"]) for r in rows] == [
        (1001, "submission.csv", MESSAGE, "COMPLETE", pytest.approx(0.98765))
    ]
    assert rows[0]["date"]
    table = pk.format_submissions_table(rows)
    assert "1001" in table and "0.98765" in table and table.splitlines()[0].startswith("ref")
    assert pk.format_submissions_table([]) == "(no submissions)"
    assert pk.submission_limits() == {
        "num_today": 2, "num_total": 7, "num_allowed_now": 3, "limited_by_total": False,
    }


def test_retry_command_is_shell_quoted(submission_file: Path) -> None:
    cmd = pk.submit_command(submission_file, MESSAGE)
    assert shlex.split(cmd) == [
        "kaggle", "competitions", "submit", "-c", "digit-recognizer", "-f", str(submission_file), "-m", MESSAGE,
    ]


# --------------------------------------------------------------------------
# Submit: faults
# --------------------------------------------------------------------------


def test_invalid_submission_is_not_uploaded(kaggle_server, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId,Label\n1,3\n2,12\n")
    with pytest.raises(DataError):
        pk.submit(bad, MESSAGE, **FAST)
    good = write_submission(tmp_path / "good.csv", [1, 2, 3])
    with pytest.raises(DataError):
        pk.submit(good, MESSAGE, expected_rows=28000, **FAST)
    assert kaggle_server.requests == []
    assert bad.read_text() == "ImageId,Label\n1,3\n2,12\n"


def test_no_credentials(kaggle_server, submission_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    err = _expect_submit_error(submission_file)
    assert err.kind == "no_credentials" and "No Kaggle credentials" in str(err)
    assert kaggle_server.requests == []


def test_rejected_credentials(kaggle_server, submission_file: Path) -> None:
    kaggle_server.key = "a-different-key"
    err = _expect_submit_error(submission_file)
    assert (err.kind, err.status_code) == ("credentials", 401)
    assert "rejected the credentials (HTTP 401" in str(err)
    assert kaggle_server.endpoints == ["GetSubmissionLimits"]


def test_rules_not_accepted(kaggle_server, submission_file: Path) -> None:
    # Before joining, Kaggle reports a 0/0 quota; the upload then gets the 403.
    kaggle_server.limits = {}
    kaggle_server.script(
        "StartSubmissionUpload", Fault(403, "You cannot submit until you accept the competition rules")
    )
    err = _expect_submit_error(submission_file)
    assert (err.kind, err.status_code) == ("rules", 403)
    assert "rules have not been accepted" in str(err) and pk.RULES_URL in str(err)
    assert "upload" not in kaggle_server.endpoints


def test_quota_used_up(kaggle_server, submission_file: Path) -> None:
    kaggle_server.limits = {"numToday": 5, "numTotal": 40, "numAllowedNow": 0}
    err = _expect_submit_error(submission_file)
    assert err.kind == "quota" and str(err).startswith("No submissions left today (5 made today)")
    assert kaggle_server.endpoints == ["GetSubmissionLimits"]


def test_server_errors_then_success(kaggle_server, submission_file: Path) -> None:
    kaggle_server.script("GetSubmissionLimits", Fault(503, "Service Unavailable", json_error=False))
    kaggle_server.script("StartSubmissionUpload", Fault(502), Fault(504, "Gateway Timeout"))
    result = pk.submit(submission_file, MESSAGE, retries=2, **FAST)
    assert result.status == "COMPLETE"
    assert kaggle_server.endpoints.count("StartSubmissionUpload") == 3
    assert kaggle_server.uploaded == [submission_file.read_bytes()]


@pytest.mark.parametrize("fault", [Fault(503, "down for maintenance", json_error=False), Fault(500, "boom")])
def test_server_errors_give_up(kaggle_server, submission_file: Path, fault: Fault) -> None:
    kaggle_server.script("StartSubmissionUpload", *[fault] * 3)
    err = _expect_submit_error(submission_file, retries=2)
    assert (err.kind, err.status_code) == ("server", fault.status)
    assert "after 3 attempts" in str(err) and f"HTTP {fault.status}" in str(err)
    assert kaggle_server.endpoints.count("StartSubmissionUpload") == 3 and not kaggle_server.submissions


def test_connection_errors(kaggle_server, submission_file: Path) -> None:
    kaggle_server.script("GetSubmissionLimits", Fault(drop=True))
    assert pk.submit(submission_file, MESSAGE, **FAST).status == "COMPLETE"

    kaggle_server.script("GetSubmissionLimits", *[Fault(drop=True)] * 2)
    err = _expect_submit_error(submission_file, retries=1)
    assert err.kind == "connection" and "could not reach Kaggle" in str(err) and "after 2 attempts" in str(err)


def test_ambiguous_create_failure_is_not_submitted_twice(kaggle_server, submission_file: Path) -> None:
    # The submission is created but the answer is lost (a 502 from a proxy).
    kaggle_server.script("CreateSubmission", Fault(502, "Bad Gateway", after=True))
    result = pk.submit(submission_file, MESSAGE, **FAST)
    assert len(kaggle_server.submissions) == 1
    assert (result.ref, result.status) == (kaggle_server.submissions[0]["ref"], "COMPLETE")
    assert "reused submission" in result.note
    assert kaggle_server.endpoints.count("CreateSubmission") == 1


def test_incomplete_blob_upload_gives_up_after_retries(kaggle_server, submission_file: Path) -> None:
    # The client reports a PUT answered 503 as INCOMPLETE, safe to resume.
    kaggle_server.script("upload", *[Fault(503, "storage busy", json_error=False)] * 2)
    err = _expect_submit_error(submission_file, retries=1)
    assert err.kind == "upload" and "after 2 attempts" in str(err) and "no submission was created" in str(err)
    assert kaggle_server.endpoints.count("upload") == 2
    assert "CreateSubmission" not in kaggle_server.endpoints and not kaggle_server.submissions


def test_refused_blob_upload_is_not_retried(kaggle_server, submission_file: Path) -> None:
    # Any other failed PUT is FAILED to the client: restarting would hit the same error.
    kaggle_server.script("upload", Fault(400, "bad blob", json_error=False))
    err = _expect_submit_error(submission_file)
    assert err.kind == "upload" and "refused the file" in str(err)
    assert kaggle_server.endpoints.count("upload") == 1
    assert "CreateSubmission" not in kaggle_server.endpoints and not kaggle_server.submissions


def test_create_without_ref_is_an_error(kaggle_server, submission_file: Path) -> None:
    kaggle_server.script("CreateSubmission", Fault(200, body={"message": "Submission quota exceeded"}))
    err = _expect_submit_error(submission_file)
    assert err.kind == "upload" and "Submission quota exceeded" in str(err)
    assert kaggle_server.endpoints.count("CreateSubmission") == 1  # a refusal is not retried


def test_each_request_is_retried_alone(kaggle_server, submission_file: Path) -> None:
    # A failed PUT retries the PUT, not the StartSubmissionUpload before it.
    kaggle_server.script("upload", Fault(503, "storage busy", json_error=False))
    assert pk.submit(submission_file, MESSAGE, retries=1, **FAST).status == "COMPLETE"
    assert kaggle_server.endpoints.count("StartSubmissionUpload") == 1
    assert kaggle_server.uploaded == [submission_file.read_bytes()] * 2
    assert kaggle_server.endpoints.count("CreateSubmission") == 1 and len(kaggle_server.submissions) == 1


def test_submit_on_a_server_that_answers_503_twice_to_every_call(kaggle_server, submission_file: Path) -> None:
    kaggle_server.flaky = 2
    kaggle_server.pending_polls = 1
    result = pk.submit(submission_file, MESSAGE, retries=2, **FAST)
    assert (result.ref, result.status, result.public_score) == (1001, "COMPLETE", pytest.approx(0.98765))
    assert len(kaggle_server.submissions) == 1
    for endpoint in ("GetSubmissionLimits", "StartSubmissionUpload", "upload", "CreateSubmission"):
        assert kaggle_server.endpoints.count(endpoint) == 3, endpoint
    # Two polls (PENDING, COMPLETE), each after two 503s.
    assert kaggle_server.endpoints.count("GetSubmission") == 6


def test_flaky_server_beyond_the_retries_fails_cleanly(kaggle_server, submission_file: Path) -> None:
    kaggle_server.flaky = 2
    err = _expect_submit_error(submission_file, retries=1)
    assert (err.kind, err.status_code) == ("server", 503) and "after 2 attempts" in str(err)
    assert kaggle_server.endpoints == ["GetSubmissionLimits"] * 2


def test_scored_as_error(kaggle_server, submission_file: Path) -> None:
    kaggle_server.final_status = "ERROR"
    kaggle_server.error_description = "Submission has 5 rows, expected 28000"
    before = _snapshot(submission_file)
    result = pk.submit(submission_file, MESSAGE, **FAST)
    assert (result.status, result.public_score) == ("ERROR", None)
    assert result.error_description == "Submission has 5 rows, expected 28000"
    assert _snapshot(submission_file) == before

    err = _expect_submit_error(submission_file, raise_on_error=True)
    assert err.kind == "scoring" and "Submission has 5 rows, expected 28000" in str(err)
    assert err.result is not None and err.result.ref == 1002


def test_pending_past_wait_is_not_an_error(kaggle_server, submission_file: Path) -> None:
    kaggle_server.pending_polls = 10**6
    result = pk.submit(submission_file, MESSAGE, wait=0.2, **{**FAST, "poll_interval": 0.05})
    assert (result.ref, result.status, result.public_score) == (1001, "PENDING", None)
    assert "still PENDING after waiting 0.2s" in result.note
    assert 2 <= kaggle_server.endpoints.count("GetSubmission") <= 10


# --------------------------------------------------------------------------
# The real CLI accepts the same file
# --------------------------------------------------------------------------


def _kaggle_cli() -> list[str]:
    beside_python = Path(sys.executable).with_name("kaggle")
    if beside_python.is_file():
        return [str(beside_python)]
    found = shutil.which("kaggle")
    return [found] if found else [sys.executable, "-m", "kaggle"]


def test_cli_submit_accepts_pipeline_file(kaggle_server, submission_file: Path) -> None:
    proc = subprocess.run(
        [*_kaggle_cli(), "competitions", "submit", "-c", "digit-recognizer", "-f", str(submission_file),
         "-m", MESSAGE],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Successfully submitted to Digit Recognizer" in proc.stdout
    assert kaggle_server.uploaded == [submission_file.read_bytes()]
    assert kaggle_server.requests_to("CreateSubmission")[0].json()["submissionDescription"] == MESSAGE
    # Same command line as the one KaggleError.retry_command suggests.
    assert shlex.split(pk.submit_command(submission_file, MESSAGE))[1:] == proc.args[-8:]
