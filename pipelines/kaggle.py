"""Kaggle I/O for the digit-recognizer pipeline, through the official ``kaggle`` client.

Downloads the competition data, uploads submission CSVs, waits for the public
score and records it in a run record. Every network action goes through the
official client (``kaggle`` 2.x / ``kagglesdk``), so whatever the
``kaggle competitions submit`` CLI accepts, this module accepts too.

Why ``kaggle`` is imported lazily: importing *any* part of the package
(``import kaggle`` or ``from kaggle.api.kaggle_api_extended import KaggleApi``;
both run ``kaggle/__init__.py``) authenticates immediately, prints a
multi-line help text when no credentials are configured, may make a network
call (access-token introspection) and creates a config directory. So this
module imports it only inside functions that perform a Kaggle action, and
only after :func:`has_credentials` said yes. Importing ``pipelines.kaggle``
never imports ``kaggle``.

Error policy: every failure of a Kaggle action surfaces as :class:`KaggleError`
with a one-line, actionable message (and, for uploads, ``retry_command``, the
equivalent CLI line to run by hand). Transient faults (HTTP 5xx/429,
connection errors) are retried with exponential backoff first. A submission
that Kaggle *scores* as ERROR is not an exception by default: it consumed
quota and has a ref, so :func:`submit` returns it (``status == "ERROR"``,
``error_description`` set) for the caller to print and record; pass
``raise_on_error=True`` to get a :class:`KaggleError` instead. The local
submission file is only ever read, never modified or deleted.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

__all__ = [
    "COMPETITION",
    "EXPECTED_FILES",
    "KaggleError",
    "SubmissionResult",
    "has_credentials",
    "download_competition_data",
    "submission_limits",
    "submit",
    "list_submissions",
    "record_submission",
    "format_submissions_table",
    "submit_command",
]

COMPETITION = "digit-recognizer"
EXPECTED_FILES = ("train.csv", "test.csv", "sample_submission.csv")
# Files without which training/prediction cannot run; sample_submission.csv is
# only informative, so its absence is a warning.
REQUIRED_FILES = ("train.csv", "test.csv")

COMPETITION_URL = f"https://www.kaggle.com/competitions/{COMPETITION}"
RULES_URL = f"{COMPETITION_URL}/rules"
# The client's own marker for an upload that failed without raising
# (KaggleApi.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE in kaggle 2.2); copied so
# that checking for it does not require importing kaggle.
UPLOAD_FAILED_MESSAGE = "Could not submit to competition"

T = TypeVar("T")
LogFn = Callable[[str], Any]


class KaggleError(RuntimeError):
    """A Kaggle action failed; the message says why and what to do.

    Attributes:
        retry_command: For upload failures, the exact shell-quoted
            ``kaggle competitions submit ...`` line that retries the upload by
            hand (for download failures, the ``kaggle competitions download``
            line); ``None`` when retrying cannot help.
        kind: Short machine-readable category: ``"no_credentials"``,
            ``"credentials"`` (401/403 rejected), ``"rules"`` (competition
            rules not accepted), ``"quota"``, ``"not_found"``, ``"server"``
            (5xx/429 after retries), ``"connection"`` (network errors/timeouts
            after retries), ``"upload"`` (client reported a failed upload),
            ``"scoring"`` (Kaggle scored the submission as ERROR), ``"data"``
            (downloaded archive unusable), ``"request"`` (other 4xx).
        status_code: HTTP status behind the failure, when there was one.
        result: For ``kind == "scoring"``, the :class:`SubmissionResult`.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_command: str | None = None,
        kind: str = "error",
        status_code: int | None = None,
        result: "SubmissionResult | None" = None,
    ) -> None:
        super().__init__(message)
        self.retry_command = retry_command
        self.kind = kind
        self.status_code = status_code
        self.result = result


@dataclass
class SubmissionResult:
    """Outcome of :func:`submit`.

    Attributes:
        ref: Kaggle's submission id (``None`` only if Kaggle never returned one).
        status: ``"COMPLETE"``, ``"ERROR"`` or ``"PENDING"`` (still scoring when
            ``wait`` ran out, or the status could not be fetched; see ``note``).
        public_score: Public leaderboard score, once COMPLETE.
        error_description: Kaggle's explanation when ``status == "ERROR"``.
        message: The submission description sent with ``-m``.
        file: Path of the submitted file, as given.
        submitted_at: UTC time of the upload, ISO 8601.
        server_message: What Kaggle answered to the upload
            (e.g. ``"Successfully submitted to Digit Recognizer"``).
        note: Human-readable remark (timeouts, reused submission, ...).
    """

    ref: int | None
    status: str
    public_score: float | None
    error_description: str | None
    message: str
    file: str
    submitted_at: str = field(default_factory=lambda: _utc_now_iso())
    server_message: str | None = None
    note: str | None = None


# --------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------


def _read_json_dict(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _nonempty_file(path: Path) -> bool:
    try:
        return path.is_file() and bool(path.read_text().strip())
    except OSError:
        return False


def _kaggle_config_dir() -> Path:
    """Directory holding kaggle.json, resolved exactly as kaggle 2.2's KaggleApi does."""
    env_dir = os.environ.get("KAGGLE_CONFIG_DIR")
    if env_dir:
        return Path(env_dir)
    home_dir = Path.home() / ".kaggle"
    # The client falls back to XDG only on Linux and only when ~/.kaggle is absent.
    if sys.platform.startswith("linux") and not home_dir.exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(xdg) / "kaggle"
    return home_dir


def has_credentials() -> bool:
    """Tell whether the official Kaggle client has credentials to use.

    Mirrors the sources kaggle 2.2.4 / kagglesdk 0.1.37 read, in the order
    ``KaggleApi.authenticate`` tries them, without importing ``kaggle`` and
    without any network call (so it cannot tell whether they are *valid*):

    1. an access token: ``KAGGLE_API_TOKEN`` (the token itself, or a path to a
       file holding it), ``~/.kaggle/access_token`` or
       ``~/.kaggle/access_token.txt``, or, inside a Kaggle notebook, the file
       named by ``KAGGLE_API_V1_TOKEN``;
    2. a legacy API key: ``username`` and ``key`` taken from ``kaggle.json``
       in the config dir (``KAGGLE_CONFIG_DIR``, else ``~/.kaggle``, else on
       Linux ``$XDG_CONFIG_HOME/kaggle`` or ``~/.config/kaggle``), each
       overridable by ``KAGGLE_USERNAME`` / ``KAGGLE_KEY``;
    3. OAuth credentials from ``kaggle auth login``:
       ``~/.kaggle/credentials.json`` with a ``refresh_token``.

    Returns:
        True when at least one of these is configured.
    """
    env = os.environ
    home_kaggle = Path.home() / ".kaggle"

    if env.get("KAGGLE_KERNEL_RUN_TYPE") and env.get("KAGGLE_DATA_PROXY_URL"):
        token_path = env.get("KAGGLE_API_V1_TOKEN")
        if token_path and _nonempty_file(Path(token_path)):
            return True
    token = env.get("KAGGLE_API_TOKEN", "").strip()
    if token:
        # The client treats the value as a file path when such a file exists.
        token_file = Path(token)
        try:
            is_file = token_file.exists()
        except OSError:  # e.g. a token too long to be a path
            is_file = False
        if not is_file or _nonempty_file(token_file):
            return True
    if _nonempty_file(home_kaggle / "access_token") or _nonempty_file(home_kaggle / "access_token.txt"):
        return True

    config = _read_json_dict(_kaggle_config_dir() / "kaggle.json")
    username = env.get("KAGGLE_USERNAME") or config.get("username")
    key = env.get("KAGGLE_KEY") or config.get("key")
    if username and key:
        return True

    return bool(_read_json_dict(home_kaggle / "credentials.json").get("refresh_token"))


def _no_credentials_error(retry_command: str | None) -> KaggleError:
    return KaggleError(
        "No Kaggle credentials found. Create an API token at https://www.kaggle.com/settings/api "
        "and set KAGGLE_API_TOKEN (or save it to ~/.kaggle/access_token), or set "
        "KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in ~/.kaggle/ "
        "(or in $KAGGLE_CONFIG_DIR).",
        retry_command=retry_command,
        kind="no_credentials",
    )


def _authenticated_api(retry_command: str | None = None) -> Any:
    """Import the official client and return an authenticated ``KaggleApi``.

    Raises:
        KaggleError: no credentials, or the client refused them.
    """
    if not has_credentials():
        raise _no_credentials_error(retry_command)
    captured = io.StringIO()
    try:
        # kaggle/__init__.py authenticates a module-level client at import and
        # prints a long help text when that fails; keep it out of our output.
        with contextlib.redirect_stdout(captured):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except SystemExit:
        # authenticate() calls exit(1) when no credential source works, e.g.
        # an access token that fails introspection.
        raise KaggleError(
            "Kaggle rejected the configured credentials (the client could not authenticate). "
            "Regenerate the API token at https://www.kaggle.com/settings/api.",
            retry_command=retry_command,
            kind="credentials",
        ) from None
    except ImportError as exc:
        # Also what happens when pipelines/ itself is on sys.path (running a
        # file from inside it): "import kaggle" then finds this module.
        raise KaggleError(
            f"The official kaggle client could not be imported ({exc}). Install kaggle>=2.0 and run "
            "the pipeline as `python -m pipelines.<module>` from the repository root.",
            retry_command=retry_command,
            kind="error",
        ) from exc
    except Exception as exc:  # network error during token introspection, ...
        raise _to_kaggle_error(exc, what="authenticating with Kaggle", retry_command=retry_command) from exc
    return api


# --------------------------------------------------------------------------
# Error mapping and retries
# --------------------------------------------------------------------------


def _response_of(exc: BaseException) -> Any:
    return getattr(exc, "response", None)


def _server_message(exc: BaseException) -> str:
    """Best human-readable message for an HTTP failure."""
    response = _response_of(exc)
    if response is not None:
        try:
            body = response.json()
            if isinstance(body, dict) and body.get("message"):
                return str(body["message"])
        except Exception:
            pass
    return str(exc) or type(exc).__name__


def _http_status(exc: BaseException) -> int | None:
    """HTTP status of a failure, preferring the ``code`` of Kaggle's JSON error body.

    kagglesdk raises ``HTTPError`` for a JSON body with ``code >= 400`` even
    when the HTTP status line says 200, so the body's code is the real one.
    """
    response = _response_of(exc)
    if response is None:
        return None
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("code"), int) and body["code"] >= 400:
            return body["code"]
    except Exception:
        pass
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _is_connection_error(exc: BaseException) -> bool:
    # requests/urllib3 are dependencies of kaggle; importing them here is cheap
    # and has no side effects (unlike importing kaggle).
    import requests
    import urllib3.exceptions

    return isinstance(
        exc,
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.TimeoutError,
            ConnectionError,
            TimeoutError,
        ),
    )


def _is_transient(exc: BaseException) -> bool:
    if _is_connection_error(exc):
        return True
    status = _http_status(exc)
    return status is not None and (status >= 500 or status == 429)


def _failed_rpc(exc: BaseException) -> str | None:
    """Name of the Kaggle RPC (e.g. ``"CreateSubmission"``) a failure came from."""
    request = getattr(exc, "request", None)
    if request is None and _response_of(exc) is not None:
        request = getattr(_response_of(exc), "request", None)
    url = getattr(request, "url", None) or ""
    path = url.split("?", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1] if "/api/v1/" in path or "/v1/" in path else None


def _to_kaggle_error(
    exc: BaseException, *, what: str, retry_command: str | None, attempts: int = 1
) -> KaggleError:
    """Translate a client exception into a :class:`KaggleError` with advice."""
    if isinstance(exc, KaggleError):
        return exc
    status = _http_status(exc)
    detail = _server_message(exc)
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if status is not None:
        lowered = detail.lower()
        if status == 403 and ("rule" in lowered or "competitions.participate" in lowered):
            return KaggleError(
                f"{what} failed: the competition rules have not been accepted for this account "
                f"(HTTP 403: {detail}). Accept them at {RULES_URL} (\"Join Competition\"), then retry.",
                retry_command=retry_command,
                kind="rules",
                status_code=status,
            )
        if status in (401, 403):
            return KaggleError(
                f"{what} failed: Kaggle rejected the credentials (HTTP {status}: {detail}). "
                "Check KAGGLE_USERNAME/KAGGLE_KEY, kaggle.json or the API token "
                "(regenerate it at https://www.kaggle.com/settings/api).",
                retry_command=retry_command,
                kind="credentials",
                status_code=status,
            )
        if status == 404:
            return KaggleError(
                f"{what} failed: Kaggle answered 404 ({detail}); is '{COMPETITION}' still open "
                "for submissions?",
                retry_command=retry_command,
                kind="not_found",
                status_code=status,
            )
        if status == 429 or status >= 500:
            return KaggleError(
                f"{what} failed{tries}: Kaggle server error (HTTP {status}: {detail}). "
                "Kaggle may be down or overloaded; try again later.",
                retry_command=retry_command,
                kind="server",
                status_code=status,
            )
        return KaggleError(
            f"{what} failed: Kaggle refused the request (HTTP {status}: {detail}).",
            retry_command=retry_command,
            kind="request",
            status_code=status,
        )
    if _is_connection_error(exc):
        return KaggleError(
            f"{what} failed{tries}: could not reach Kaggle ({type(exc).__name__}: {exc}). "
            "Check the network connection and try again.",
            retry_command=retry_command,
            kind="connection",
        )
    return KaggleError(
        f"{what} failed: {type(exc).__name__}: {exc}", retry_command=retry_command, kind="error"
    )


def _with_retries(
    action: Callable[[], T],
    *,
    what: str,
    retries: int,
    backoff: float,
    log: LogFn,
    retry_command: str | None,
) -> T:
    """Run ``action``, retrying transient failures with exponential backoff.

    Waits ``backoff * 2**i`` seconds before retry ``i + 1``; at most
    ``retries`` retries, so ``retries + 1`` attempts in all.

    Raises:
        KaggleError: a permanent failure, or a transient one that outlived the retries.
    """
    attempt = 0
    while True:
        try:
            return action()
        except KaggleError:
            raise
        except Exception as exc:
            if not _is_transient(exc) or attempt >= retries:
                raise _to_kaggle_error(
                    exc, what=what, retry_command=retry_command, attempts=attempt + 1
                ) from exc
            delay = max(0.0, backoff) * (2**attempt)
            attempt += 1
            log(
                f"Kaggle: {what} failed ({_describe(exc)}); retry {attempt}/{retries} "
                f"in {delay:.1f}s"
            )
            time.sleep(delay)


def _describe(exc: BaseException) -> str:
    status = _http_status(exc)
    if status is not None:
        return f"HTTP {status}: {_server_message(exc)}"
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------


def download_command(data_dir: str | os.PathLike[str]) -> str:
    """The CLI line that downloads the competition data into ``data_dir``."""
    return shlex.join(["kaggle", "competitions", "download", "-c", COMPETITION, "-p", str(data_dir)])


def _extract_archive(archive: Path, data_dir: Path) -> list[str]:
    """Unpack ``archive`` into ``data_dir``; return the names written.

    Each member is written to a temporary name and renamed into place, so an
    interrupted extraction never leaves a truncated ``train.csv`` behind that
    a later run would trust. Members that would land outside ``data_dir``
    (absolute paths, ``..``) are skipped.
    """
    root = data_dir.resolve()
    written: list[str] = []
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            target = (root / info.filename).resolve()
            if root != target and root not in target.parents:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            with zf.open(info) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)
            written.append(info.filename)
    return written


def download_competition_data(
    data_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    retries: int = 3,
    backoff: float = 2.0,
    log: LogFn = print,
) -> bool:
    """Download and unpack the digit-recognizer data into ``data_dir``.

    This is the ``download`` seam of ``pipelines.data``. kaggle 2.2's
    ``competition_download_files`` has no ``unzip`` argument: it saves
    ``<data_dir>/digit-recognizer.zip`` (name built from the competition slug
    and the extension of the redirect URL) and skips the transfer when that
    archive is already up to date, so the archive is kept and unpacked here.

    Args:
        data_dir: Destination directory (created if needed).
        force: Download again even if an up-to-date archive is present.
        retries: Retries for transient failures (5xx, connection errors).
        backoff: Seconds before the first retry; doubled each time.
        log: Progress sink.

    Returns:
        False, without importing ``kaggle``, when no credentials are
        configured; True once train.csv and test.csv are in ``data_dir``.

    Raises:
        KaggleError: the download failed (rejected credentials, rules not
            accepted, server/connection errors after retries), the archive is
            not a valid zip, or it lacks train.csv/test.csv.
    """
    if not has_credentials():
        return False
    data_dir = Path(data_dir)
    retry_cmd = download_command(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    api = _authenticated_api(retry_cmd)
    log(f"Kaggle: downloading {COMPETITION} data into {data_dir}")
    _with_retries(
        lambda: api.competition_download_files(COMPETITION, path=str(data_dir), force=force, quiet=True),
        what=f"downloading the {COMPETITION} data",
        retries=retries,
        backoff=backoff,
        log=log,
        retry_command=retry_cmd,
    )
    archive = data_dir / f"{COMPETITION}.zip"
    if archive.is_file():
        try:
            _extract_archive(archive, data_dir)
        except (zipfile.BadZipFile, OSError) as exc:
            raise KaggleError(
                f"Downloaded archive {archive} could not be unpacked ({exc}); delete it and retry.",
                retry_command=retry_cmd,
                kind="data",
            ) from exc
    missing = [name for name in REQUIRED_FILES if not (data_dir / name).is_file()]
    if missing:
        raise KaggleError(
            f"Kaggle download finished but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing from {data_dir}.",
            retry_command=retry_cmd,
            kind="data",
        )
    absent = [name for name in EXPECTED_FILES if not (data_dir / name).is_file()]
    if absent:
        log(f"Kaggle: warning: {', '.join(absent)} not in the download")
    return True


# --------------------------------------------------------------------------
# Submissions
# --------------------------------------------------------------------------


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


def submission_limits(*, retries: int = 3, backoff: float = 2.0, log: LogFn = print) -> dict[str, Any]:
    """Today's submission quota, from ``KaggleApi.competition_get_submission_limits``.

    Returns:
        ``{"num_today", "num_total", "num_allowed_now", "limited_by_total"}``.
        Kaggle reports all zeros when the account has not joined the
        competition (no team yet).

    Raises:
        KaggleError: no credentials, rejected, or Kaggle unreachable.
    """
    api = _authenticated_api()
    limits = _with_retries(
        lambda: api.competition_get_submission_limits(COMPETITION),
        what="fetching the submission quota",
        retries=retries,
        backoff=backoff,
        log=log,
        retry_command=None,
    )
    return _limits_dict(limits)


def _status_name(status: Any) -> str:
    return getattr(status, "name", None) or str(status or "PENDING")


def _parse_score(score: Any) -> float | None:
    # ApiSubmission.public_score is a string; "" or None until scored.
    if score is None or (isinstance(score, str) and not score.strip()):
        return None
    try:
        return float(score)
    except (TypeError, ValueError):
        return None


def _utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _find_recent_submission(api: Any, file_name: str, message: str, since: _dt.datetime) -> int | None:
    """Ref of a submission of ``file_name``/``message`` made since ``since``, if any.

    Used after an ambiguous CreateSubmission failure (5xx or dropped
    connection): Kaggle may have created the submission anyway, and blindly
    resubmitting would spend another of the day's few submissions.
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
        if sub.date is not None and sub.date < floor:
            continue
        return int(sub.ref) or None
    return None


def _upload(
    api: Any,
    path: Path,
    message: str,
    *,
    retries: int,
    backoff: float,
    log: LogFn,
    retry_command: str,
) -> tuple[int, str, str | None]:
    """Upload with retries; return ``(ref, server_message, note)``."""
    started = _dt.datetime.now(_dt.timezone.utc)
    create_was_ambiguous = False

    def attempt() -> tuple[int, str, str | None]:
        nonlocal create_was_ambiguous
        if create_was_ambiguous:
            ref = _find_recent_submission(api, path.name, message, started)
            if ref is not None:
                log(f"Kaggle: the failed attempt did create submission {ref}; not submitting again")
                return ref, "", f"reused submission {ref} created by an attempt that reported an error"
        try:
            response = api.competition_submit(str(path), message, COMPETITION, quiet=True)
        except Exception as exc:
            if _failed_rpc(exc) == "CreateSubmission" and _is_transient(exc):
                create_was_ambiguous = True
            raise
        server_message = getattr(response, "message", "") or ""
        ref = int(getattr(response, "ref", 0) or 0)
        if not ref:
            # kaggle 2.2 reports a failed blob upload by *returning* a response
            # whose message is UPLOAD_FAILED_MESSAGE (no ref) instead of
            # raising; nothing was created then, so it is safe to retry.
            if server_message == UPLOAD_FAILED_MESSAGE:
                raise _UploadFailed(server_message)
            raise KaggleError(
                f"Kaggle did not accept the submission: {server_message or 'no submission ref returned'}.",
                retry_command=retry_command,
                kind="upload",
            )
        return ref, server_message, None

    try:
        return _with_retries(
            attempt,
            what=f"uploading {path.name}",
            retries=retries,
            backoff=backoff,
            log=log,
            retry_command=retry_command,
        )
    except KaggleError as err:
        if isinstance(err.__cause__, _UploadFailed):
            raise KaggleError(
                f"Uploading {path.name} to Kaggle failed: the client reported "
                f"'{err.__cause__}' (the file transfer to Kaggle's storage did not complete, "
                f"no submission was created) after {retries + 1} attempts.",
                retry_command=retry_command,
                kind="upload",
            ) from err.__cause__
        raise


class _UploadFailed(ConnectionError):
    """The client returned its 'Could not submit' marker; treated as transient."""


def _get_submission(api: Any, ref: int) -> Any:
    # KaggleApi has no single-submission getter; GetSubmission is called
    # through the client's own kagglesdk client (same auth, env and proxies).
    from kagglesdk.competitions.types.competition_api_service import ApiGetSubmissionRequest

    request = ApiGetSubmissionRequest()
    request.ref = ref
    with api.build_kaggle_client() as client:
        return client.competitions.competition_api_client.get_submission(request)


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
) -> SubmissionResult:
    """Validate, upload and (up to ``wait`` seconds) await the score of a submission.

    Steps: validate the CSV locally (nothing is sent if it is invalid);
    check today's quota; upload with ``KaggleApi.competition_submit`` (the
    code path of ``kaggle competitions submit``); poll GetSubmission until
    Kaggle reports COMPLETE or ERROR.

    Args:
        path: Submission CSV (``ImageId,Label``); read only, never modified.
        message: Submission description (``-m``).
        wait: Seconds to wait for scoring; 0 returns right after the upload.
        poll_interval: Seconds between status polls.
        expected_rows: Row count to insist on (28000 for the real test set).
        retries: Retries per Kaggle call for transient failures.
        backoff: Seconds before the first retry; doubled each time.
        log: Progress sink.
        raise_on_error: Raise :class:`KaggleError` (``kind="scoring"``) when
            Kaggle scores the submission as ERROR instead of returning it.

    Returns:
        The :class:`SubmissionResult`. ``status`` is ``"ERROR"`` (with
        ``error_description``) when Kaggle could not score the file, and
        ``"PENDING"`` (with ``note``) when scoring outlasted ``wait`` or the
        status could not be fetched: the upload itself succeeded then.

    Raises:
        pipelines.data.DataError: the file is not a valid submission.
        KaggleError: no or rejected credentials, rules not accepted, no
            submissions left today, a failed upload, or server/connection
            errors that outlived the retries; ``retry_command`` holds the CLI
            line to retry by hand.
    """
    # Imported here, not at module level: pipelines.data imports this module
    # for its download seam, and a top-level import would be circular.
    from pipelines.data import validate_submission

    path = Path(path)
    retry_cmd = submit_command(path, message)
    rows = validate_submission(path, expected_rows=expected_rows)
    api = _authenticated_api(retry_cmd)

    limits = _limits_dict(
        _with_retries(
            lambda: api.competition_get_submission_limits(COMPETITION),
            what="checking the submission quota",
            retries=retries,
            backoff=backoff,
            log=log,
            retry_command=retry_cmd,
        )
    )
    if limits["num_allowed_now"] <= 0:
        if limits["limited_by_total"]:
            raise KaggleError(
                f"No submissions left: the lifetime cap for {COMPETITION} is reached "
                f"({limits['num_total']} made).",
                retry_command=retry_cmd,
                kind="quota",
            )
        if limits["num_today"] > 0 or limits["num_total"] > 0:
            raise KaggleError(
                f"No submissions left today ({limits['num_today']} made today); the quota resets "
                "at 00:00 UTC. Retry then.",
                retry_command=retry_cmd,
                kind="quota",
            )
        # All zeros is also what Kaggle reports before the account joined the
        # competition; let the upload get Kaggle's own (rules) answer.
        log("Kaggle: quota reported as 0/0 (competition not joined yet?); trying anyway")

    log(f"Kaggle: submitting {path} ({rows} rows): {message!r}")
    submitted_at = _utc_now_iso()
    ref, server_message, note = _upload(
        api, path, message, retries=retries, backoff=backoff, log=log, retry_command=retry_cmd
    )
    log(f"Kaggle: submission {ref} accepted{': ' + server_message if server_message else ''}")

    result = SubmissionResult(
        ref=ref,
        status="PENDING",
        public_score=None,
        error_description=None,
        message=message,
        file=str(path),
        submitted_at=submitted_at,
        server_message=server_message or None,
        note=note,
    )
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        try:
            sub = _with_retries(
                lambda: _get_submission(api, ref),
                what=f"fetching the status of submission {ref}",
                retries=retries,
                backoff=backoff,
                log=log,
                retry_command=None,
            )
        except KaggleError as err:
            # The upload succeeded; losing the ref over a status fetch would
            # be worse than reporting "not known yet".
            result.note = f"submitted, but its status could not be fetched: {err}"
            log(f"Kaggle: {result.note}")
            return result
        result.status = _status_name(sub.status)
        if result.status in ("COMPLETE", "ERROR"):
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            result.note = (
                f"still {result.status} after waiting {wait:g}s; check later with "
                f"`kaggle competitions submissions -c {COMPETITION}`"
            )
            log(f"Kaggle: submission {ref} {result.note}")
            return result
        time.sleep(min(max(poll_interval, 0.0), remaining))

    result.public_score = _parse_score(sub.public_score)
    result.error_description = sub.error_description or None
    if result.status == "ERROR":
        description = result.error_description or "no description given"
        log(f"Kaggle: submission {ref} was scored as ERROR: {description}")
        if raise_on_error:
            raise KaggleError(
                f"Kaggle could not score submission {ref} of {path.name}: {description}",
                retry_command=retry_cmd,
                kind="scoring",
                result=result,
            )
    else:
        log(f"Kaggle: submission {ref} public score: {result.public_score}")
    return result


def list_submissions(*, retries: int = 3, backoff: float = 2.0, log: LogFn = print) -> list[dict[str, Any]]:
    """This account's most recent digit-recognizer submissions (first page, newest first).

    Returns:
        One dict per submission: ``ref``, ``date`` (ISO string or None),
        ``file_name``, ``description``, ``status``, ``public_score`` (float or None).

    Raises:
        KaggleError: no or rejected credentials, or Kaggle unreachable.
    """
    api = _authenticated_api()
    submissions = _with_retries(
        lambda: api.competition_submissions(COMPETITION),
        what="listing submissions",
        retries=retries,
        backoff=backoff,
        log=log,
        retry_command=None,
    )
    rows = []
    for sub in submissions or []:
        if sub is None:
            continue
        rows.append(
            {
                "ref": int(sub.ref) if sub.ref else None,
                "date": sub.date.isoformat() if sub.date else None,
                "file_name": sub.file_name,
                "description": sub.description,
                "status": _status_name(sub.status),
                "public_score": _parse_score(sub.public_score),
            }
        )
    return rows


def format_submissions_table(rows: list[dict[str, Any]]) -> str:
    """Render :func:`list_submissions` rows as a fixed-width text table.

    Args:
        rows: Dicts with (some of) ``ref``, ``date``, ``file_name``,
            ``status``, ``public_score``, ``description``.

    Returns:
        The table, header first; ``"(no submissions)"`` when ``rows`` is empty.
    """
    if not rows:
        return "(no submissions)"
    columns = [
        ("ref", "ref"),
        ("date", "date"),
        ("file_name", "file"),
        ("status", "status"),
        ("public_score", "score"),
        ("description", "description"),
    ]

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if key == "public_score" and isinstance(value, float):
            return f"{value:.5f}"
        return str(value).replace("\n", " ")

    table = [[label for _, label in columns]] + [[cell(r, key) for key, _ in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def record_submission(run_record_path: str | os.PathLike[str], result: SubmissionResult) -> None:
    """Store ``result`` under the ``"kaggle"`` key of an existing JSON run record.

    Other keys are kept as they are. The record is rewritten atomically (temp
    file in the same directory, then ``os.replace``), so a crash never leaves
    a truncated record.

    Args:
        run_record_path: The run record (a JSON object) to update.
        result: What :func:`submit` returned.

    Raises:
        FileNotFoundError: the record does not exist.
        ValueError: the record is not a JSON object.
    """
    record_path = Path(run_record_path)
    record = json.loads(record_path.read_text())
    if not isinstance(record, dict):
        raise ValueError(f"{record_path}: run record must be a JSON object, got {type(record).__name__}")
    data = asdict(result)
    record["kaggle"] = {
        "competition": COMPETITION,
        "ref": data["ref"],
        "status": data["status"],
        "public_score": data["public_score"],
        "error_description": data["error_description"],
        "message": data["message"],
        "file": data["file"],
        "submitted_at": data["submitted_at"],
        "note": data["note"],
    }
    fd, tmp_name = tempfile.mkstemp(dir=record_path.parent, prefix=f".{record_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        shutil.copymode(record_path, tmp_name)
        os.replace(tmp_name, record_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
