"""Uploading a submission, waiting for its score, and keeping it in the run record.

A submission Kaggle scores as ERROR is not an exception by default: it used
quota and has a ref, so :func:`submit` returns it for the caller to report
and record. The local submission file is only ever read.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shlex
import time
from pathlib import Path
from typing import Any, Callable

from pipelines.data import validate_submission
from pipelines.kaggle.client import (
    COMPETITION,
    KaggleError,
    TransientError,
    authenticated_api,
    call,
    is_transient,
)
from pipelines.kaggle.submissions import parse_score, status_name
from pipelines.records import write_json_atomically

LogFn = Callable[[str], Any]


def _utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclasses.dataclass
class SubmissionResult:
    """What became of one submission.

    Attributes:
        ref: Kaggle's submission id.
        status: ``"COMPLETE"``, ``"ERROR"`` or ``"PENDING"`` (still scoring
            when the wait ran out, or the status could not be fetched: see ``note``).
        public_score: Public leaderboard score, once COMPLETE.
        error_description: Kaggle's explanation when ``status == "ERROR"``.
        message: The submission description (``-m``).
        file: Path of the submitted file, as given.
        submitted_at: UTC time of the upload, ISO 8601.
        server_message: What Kaggle answered to the upload.
        note: Timeouts, a reused submission, ...
    """

    ref: int | None
    status: str
    public_score: float | None
    error_description: str | None
    message: str
    file: str
    submitted_at: str = dataclasses.field(default_factory=_utc_now_iso)
    server_message: str | None = None
    note: str | None = None


def submit_command(path: str | os.PathLike[str], message: str) -> str:
    """The exact, shell-quoted CLI line that submits ``path`` with ``message``."""
    return shlex.join(["kaggle", "competitions", "submit", "-c", COMPETITION, "-f", str(path), "-m", message])


def _limits_dict(limits: Any) -> dict[str, Any]:
    return {
        "num_today": int(getattr(limits, "num_today", 0) or 0),
        "num_total": int(getattr(limits, "num_total", 0) or 0),
        "num_allowed_now": int(getattr(limits, "num_allowed_now", 0) or 0),
        "limited_by_total": bool(getattr(limits, "limited_by_total", False)),
    }


def submission_limits(*, retries: int = 3, backoff: float = 2.0) -> dict[str, Any]:
    """Today's quota: ``num_today``, ``num_total``, ``num_allowed_now``,
    ``limited_by_total`` (all zero before the account joined the competition)."""
    api = authenticated_api()
    return _limits_dict(call(api, api.competition_get_submission_limits, COMPETITION,
                             what="fetching the submission quota", retries=retries, backoff=backoff,
                             retry_command=None))


def _check_quota(api: Any, retry: dict[str, Any], log: LogFn) -> None:
    limits = _limits_dict(call(api, api.competition_get_submission_limits, COMPETITION,
                               what="checking the submission quota", **retry))
    if limits["num_allowed_now"] > 0:
        return
    if limits["limited_by_total"]:
        raise KaggleError(
            f"No submissions left: the lifetime cap for {COMPETITION} is reached ({limits['num_total']} made).",
            retry_command=retry["retry_command"], kind="quota",
        )
    if limits["num_today"] > 0 or limits["num_total"] > 0:
        raise KaggleError(
            f"No submissions left today ({limits['num_today']} made today); the quota resets at 00:00 UTC. "
            "Retry then.",
            retry_command=retry["retry_command"], kind="quota",
        )
    # All zeros is also the quota before joining; the upload then gets Kaggle's own answer.
    log("Kaggle: quota reported as 0/0 (competition not joined yet?); trying anyway")


class _PutIncomplete(TransientError):
    """The blob PUT ended INCOMPLETE, which the client calls safe to resume."""


def _find_recent_submission(api: Any, file_name: str, message: str, since: _dt.datetime) -> int | None:
    """Ref of a submission of ``file_name`` with ``message`` made since ``since``.

    After a CreateSubmission that failed with a 5xx or a lost connection,
    Kaggle may have created it anyway; submitting again would spend another
    of the day's few submissions.
    """
    try:
        submissions = api.competition_submissions(COMPETITION) or []
    except Exception:
        return None
    # kagglesdk parses dates as naive UTC; allow for clock skew.
    floor = since.replace(tzinfo=None) - _dt.timedelta(minutes=10)
    for sub in submissions:
        if sub is None or (sub.description or "") != message or (sub.file_name or "") != file_name:
            continue
        if sub.date is None or sub.date >= floor:
            return int(sub.ref) or None
    return None


def _upload(api: Any, path: Path, message: str, retry: dict[str, Any], log: LogFn) -> tuple[int, str, str | None]:
    """The three requests of ``KaggleApi.competition_submit``, each under its own retries.

    ``competition_submit`` retries none of them, and retrying it whole spends
    one budget on all three. Returns ``(ref, server_message, note)``.
    """
    from kaggle.models.kaggle_models_extended import ResumableUploadResult
    from kagglesdk.competitions.types.competition_api_service import (
        ApiCreateSubmissionRequest,
        ApiStartSubmissionUploadRequest,
    )

    started = _dt.datetime.now(_dt.timezone.utc)
    with api.build_kaggle_client() as client:
        service = client.competitions.competition_api_client
        start_request = ApiStartSubmissionUploadRequest()
        start_request.competition_name = COMPETITION
        start_request.file_name = path.name
        start_request.content_length = path.stat().st_size
        start_request.last_modified_epoch_seconds = int(path.stat().st_mtime)
        start = call(api, service.start_submission_upload, start_request,
                     what=f"starting the upload of {path.name}", **retry)

        def put() -> None:
            outcome = api.upload_complete(str(path), start.create_url, True)
            if outcome == ResumableUploadResult.INCOMPLETE:
                raise _PutIncomplete(f"the transfer of {path.name} to Kaggle's storage did not complete")
            if outcome != ResumableUploadResult.COMPLETE:
                raise KaggleError(
                    f"Uploading {path.name} to Kaggle failed: Kaggle's storage refused the file "
                    "(the client does not retry this); no submission was created.",
                    retry_command=retry["retry_command"], kind="upload",
                )

        try:
            call(api, put, what=f"uploading {path.name}", **retry)
        except KaggleError as err:
            if isinstance(err.__cause__, _PutIncomplete):
                raise KaggleError(
                    f"Uploading {path.name} to Kaggle failed after {retry['retries'] + 1} attempts: "
                    f"{err.__cause__}; no submission was created.",
                    retry_command=retry["retry_command"], kind="upload",
                ) from err.__cause__
            raise

        create_request = ApiCreateSubmissionRequest()
        create_request.competition_name = COMPETITION
        create_request.blob_file_tokens = start.token
        create_request.submission_description = message
        create_was_ambiguous = False

        def create() -> tuple[int, str, str | None]:
            nonlocal create_was_ambiguous
            if create_was_ambiguous:
                ref = _find_recent_submission(api, path.name, message, started)
                if ref is not None:
                    log(f"Kaggle: the failed attempt did create submission {ref}; not submitting again")
                    return ref, "", f"reused submission {ref} created by an attempt that reported an error"
            try:
                response = service.create_submission(create_request)
            except Exception as exc:
                create_was_ambiguous = create_was_ambiguous or is_transient(exc)
                raise
            ref = int(response.ref or 0)
            if not ref:
                raise KaggleError(
                    f"Kaggle did not accept the submission: {response.message or 'no submission ref returned'}.",
                    retry_command=retry["retry_command"], kind="upload",
                )
            return ref, response.message or "", None

        return call(api, create, what=f"creating the submission of {path.name}", **retry)


def _await_score(api: Any, result: SubmissionResult, *, wait: float, poll_interval: float,
                 retry: dict[str, Any], log: LogFn) -> SubmissionResult:
    """Polls ``KaggleApi.get_submission`` until COMPLETE or ERROR, at most ``wait`` seconds."""
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        try:
            sub = call(api, api.get_submission, result.ref,
                       what=f"fetching the status of submission {result.ref}", **{**retry, "retry_command": None})
        except KaggleError as err:
            # The upload succeeded; report "not known yet" rather than lose the ref.
            result.note = f"submitted, but its status could not be fetched: {err}"
            log(f"Kaggle: {result.note}")
            return result
        result.status = status_name(sub.status)
        if result.status in ("COMPLETE", "ERROR"):
            result.public_score = parse_score(sub.public_score)
            result.error_description = sub.error_description or None
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            result.note = (f"still {result.status} after waiting {wait:g}s; check later with "
                           f"`kaggle competitions submission {result.ref}`")
            log(f"Kaggle: submission {result.ref} {result.note}")
            return result
        time.sleep(min(max(poll_interval, 0.0), remaining))


def submit(
    path: str | os.PathLike[str],
    message: str,
    *,
    wait: float = 600.0,
    poll_interval: float = 5.0,
    expected_rows: int | None = None,
    retries: int = 3,
    backoff: float = 2.0,
    log: LogFn = print,
    raise_on_error: bool = False,
    on_uploaded: Callable[[SubmissionResult], Any] | None = None,
) -> SubmissionResult:
    """Validate, upload and (up to ``wait`` seconds) await the score of a submission.

    Args:
        path: Submission CSV (``ImageId,Label``); never modified.
        message: Submission description (``-m``).
        wait: Seconds to wait for scoring; 0 returns right after the upload.
        poll_interval: Seconds between status polls.
        expected_rows: Row count to insist on (28000 for the real test set).
        retries: Retries of each Kaggle request for transient failures.
        backoff: Seconds before the first retry, growing 1.7x per retry.
        log: Progress sink.
        raise_on_error: Raise ``KaggleError(kind="scoring")`` for a submission
            scored as ERROR instead of returning it.
        on_uploaded: Called with the PENDING result as soon as Kaggle
            accepted the upload, before waiting: an interrupted wait then
            still leaves the ref recorded.

    Returns:
        The :class:`SubmissionResult`: ``status`` ``"ERROR"`` with
        ``error_description`` when Kaggle could not score the file,
        ``"PENDING"`` with ``note`` when scoring outlasted ``wait``.

    Raises:
        pipelines.data.DataError: the file is not a valid submission (nothing is sent).
        KaggleError: credentials, rules, quota, a failed upload, or server or
            connection errors that outlived the retries; ``retry_command``
            holds the CLI line to retry by hand.
    """
    path = Path(path)
    retry = {"retries": retries, "backoff": backoff, "retry_command": submit_command(path, message)}
    rows = validate_submission(path, expected_rows=expected_rows)
    api = authenticated_api(retry["retry_command"])
    _check_quota(api, retry, log)
    log(f"Kaggle: submitting {path} ({rows} rows): {message!r}")
    submitted_at = _utc_now_iso()
    ref, server_message, note = _upload(api, path, message, retry, log)
    log(f"Kaggle: submission {ref} accepted{': ' + server_message if server_message else ''}")
    result = SubmissionResult(ref, "PENDING", None, None, message, str(path), submitted_at,
                              server_message or None, note)
    if on_uploaded is not None:
        on_uploaded(dataclasses.replace(result))
    result = _await_score(api, result, wait=wait, poll_interval=poll_interval, retry=retry, log=log)
    if result.status == "ERROR":
        description = result.error_description or "no description given"
        log(f"Kaggle: submission {ref} was scored as ERROR: {description}")
        if raise_on_error:
            raise KaggleError(f"Kaggle could not score submission {ref} of {path.name}: {description}",
                              retry_command=retry["retry_command"], kind="scoring", result=result)
    elif result.status == "COMPLETE":
        log(f"Kaggle: submission {ref} public score: {result.public_score}")
    return result


def await_score(result: SubmissionResult, *, wait: float = 600.0, poll_interval: float = 5.0,
                retries: int = 3, backoff: float = 2.0, log: LogFn = print) -> SubmissionResult:
    """Wait again for a submission left PENDING (e.g. by an interrupted run)."""
    api = authenticated_api()
    retry = {"retries": retries, "backoff": backoff, "retry_command": None}
    return _await_score(api, dataclasses.replace(result), wait=wait, poll_interval=poll_interval,
                        retry=retry, log=log)


def result_from_record(record: dict[str, Any]) -> SubmissionResult | None:
    """The :class:`SubmissionResult` kept in a run record by :func:`record_submission`."""
    kept = record.get("kaggle")
    if not isinstance(kept, dict) or not kept.get("ref"):
        return None
    names = {f.name for f in dataclasses.fields(SubmissionResult)}
    return SubmissionResult(**{k: v for k, v in kept.items() if k in names})


def record_submission(run_record_path: str | os.PathLike[str], result: SubmissionResult) -> None:
    """Store ``result`` under the ``"kaggle"`` key of an existing JSON run record,
    rewritten atomically; other keys are kept.

    Raises:
        FileNotFoundError: the record does not exist.
        ValueError: the record is not a JSON object.
    """
    record_path = Path(run_record_path)
    record = json.loads(record_path.read_text())
    if not isinstance(record, dict):
        raise ValueError(f"{record_path}: run record must be a JSON object, got {type(record).__name__}")
    data = dataclasses.asdict(result)
    record["kaggle"] = {"competition": COMPETITION, **{k: data[k] for k in (
        "ref", "status", "public_score", "error_description", "message", "file", "submitted_at", "note")}}
    write_json_atomically(record_path, record)
