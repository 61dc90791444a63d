"""The official ``kaggle`` client, authenticated, and its failures as one :class:`KaggleError`.

``kaggle`` is imported only inside :func:`authenticated_api`, and only after
:func:`has_credentials` found something to authenticate with: importing any
part of the package runs ``kaggle/__init__.py``, which authenticates at once,
prints a long help text when that fails, may call the network (access-token
introspection) and creates ``~/.kaggle``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

COMPETITION = "digit-recognizer"
COMPETITION_URL = f"https://www.kaggle.com/competitions/{COMPETITION}"
RULES_URL = f"{COMPETITION_URL}/rules"

T = TypeVar("T")


class KaggleError(RuntimeError):
    """A Kaggle action failed; the message says what failed and what to do.

    Attributes:
        retry_command: The shell-quoted ``kaggle competitions ...`` line that
            redoes the action by hand; ``None`` when retrying cannot help.
        kind: ``"no_credentials"``, ``"credentials"`` (401/403), ``"rules"``
            (rules not accepted), ``"quota"``, ``"not_found"``, ``"server"``
            (5xx after retries), ``"connection"`` (after retries),
            ``"upload"``, ``"scoring"`` (scored as ERROR), ``"data"`` (the
            download is unusable), ``"request"`` (other 4xx) or ``"error"``.
        status_code: The HTTP status behind the failure, when there was one.
        result: For ``kind == "scoring"``, the ``SubmissionResult``.
    """

    def __init__(self, message, *, retry_command=None, kind="error", status_code=None, result=None):
        super().__init__(message)
        self.retry_command = retry_command
        self.kind = kind
        self.status_code = status_code
        self.result = result


# -- credentials -------------------------------------------------------------


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


def _config_dir() -> Path:
    # As KaggleApi.config_dir: XDG only on Linux and only without ~/.kaggle.
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home_dir = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not home_dir.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    return home_dir


def has_credentials() -> bool:
    """Whether the client has any credentials to try, without importing it.

    A cheap gate, not a check of validity (``authenticate()`` decides that).
    It looks where ``KaggleApi.authenticate`` looks, in its order: an access
    token (``kagglesdk.get_access_token_from_env``: the notebook token file,
    ``KAGGLE_API_TOKEN`` as token or path, ``~/.kaggle/access_token[.txt]``),
    then ``username``/``key`` from ``kaggle.json`` overridden by
    ``KAGGLE_USERNAME``/``KAGGLE_KEY``, then the OAuth ``refresh_token`` in
    ``~/.kaggle/credentials.json``. It cannot ask the client itself: that
    import has the side effects listed in the module docstring.
    """
    env = os.environ
    home_kaggle = Path.home() / ".kaggle"
    if env.get("KAGGLE_KERNEL_RUN_TYPE") and env.get("KAGGLE_DATA_PROXY_URL"):
        token_path = env.get("KAGGLE_API_V1_TOKEN")
        if token_path and _nonempty_file(Path(token_path)):
            return True
    token = env.get("KAGGLE_API_TOKEN", "").strip()
    if token:
        try:
            is_path = Path(token).exists()
        except OSError:  # a token too long to be a path
            is_path = False
        if not is_path or _nonempty_file(Path(token)):
            return True
    if _nonempty_file(home_kaggle / "access_token") or _nonempty_file(home_kaggle / "access_token.txt"):
        return True
    config = _read_json_dict(_config_dir() / "kaggle.json")
    if (env.get("KAGGLE_USERNAME") or config.get("username")) and (env.get("KAGGLE_KEY") or config.get("key")):
        return True
    return bool(_read_json_dict(home_kaggle / "credentials.json").get("refresh_token"))


def authenticated_api(retry_command: str | None = None) -> Any:
    """An authenticated ``KaggleApi``.

    Raises:
        KaggleError: no credentials, the client refused them, or it could not be imported.
    """
    if not has_credentials():
        raise KaggleError(
            "No Kaggle credentials found. Create an API token at https://www.kaggle.com/settings/api "
            "and set KAGGLE_API_TOKEN (or save it to ~/.kaggle/access_token), or set "
            "KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in ~/.kaggle/ (or in $KAGGLE_CONFIG_DIR).",
            retry_command=retry_command,
            kind="no_credentials",
        )
    try:
        # The client prints its help text when authentication fails.
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except SystemExit:  # authenticate() exits when no source works, e.g. a dead access token
        raise KaggleError(
            "Kaggle rejected the configured credentials (the client could not authenticate). "
            "Regenerate the API token at https://www.kaggle.com/settings/api.",
            retry_command=retry_command,
            kind="credentials",
        ) from None
    except ImportError as exc:
        # Also what running a file from inside pipelines/ gives: `import kaggle`
        # then finds this package.
        raise KaggleError(
            f"The official kaggle client could not be imported ({exc}). Install kaggle>=2.2 and run "
            "the pipeline as `python -m pipelines.<module>` from the repository root.",
            retry_command=retry_command,
        ) from exc
    except Exception as exc:  # token introspection is a network call
        raise to_kaggle_error(exc, what="authenticating with Kaggle", retry_command=retry_command) from exc
    return api


# -- retries -------------------------------------------------------------------


class TransientError(ConnectionError):
    """A failure worth retrying that ``KaggleApi.with_retry`` would not retry.

    ``with_retry`` retries connection errors and 429 only; a 5xx or a read
    timeout is raised as this ``ConnectionError`` so that it retries them
    too, and unwrapped again (``__cause__``) once it gives up.
    """


def call(
    api: Any,
    func: Callable[..., T],
    *args: Any,
    what: str,
    retries: int,
    backoff: float,
    retry_command: str | None,
    **kwargs: Any,
) -> T:
    """``func(*args, **kwargs)`` as one Kaggle request under ``api.with_retry``.

    Each request gets its own ``retries``: a flaky server costs one retry of
    the request that failed, not of everything before it. ``with_retry``
    waits ``backoff * 1.7**i`` seconds before retry ``i`` (``Retry-After``
    instead, on a 429). ``func`` may raise :class:`TransientError` subclasses
    itself to have its own soft failures retried.

    Raises:
        KaggleError: ``what`` failed, permanently or after ``retries + 1`` attempts.
    """
    attempts = 0

    def once() -> T:
        nonlocal attempts
        attempts += 1
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, ConnectionError) and _is_server_side(exc):
                raise TransientError(describe(exc)) from exc
            raise

    try:
        return api.with_retry(once, max_retries=retries + 1, initial_delay_millis=max(1, int(backoff * 1000)))()
    except KaggleError:
        raise
    except TransientError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise to_kaggle_error(cause, what=what, retry_command=retry_command, attempts=attempts) from cause
    except Exception as exc:
        raise to_kaggle_error(exc, what=what, retry_command=retry_command, attempts=attempts) from exc


# -- what went wrong -----------------------------------------------------------


def _body(exc: BaseException) -> Any:
    response = getattr(exc, "response", None)
    try:
        return response.json() if response is not None else None
    except Exception:
        return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a failure; the ``code`` of Kaggle's JSON error body
    first, as kagglesdk raises for ``code >= 400`` under an HTTP 200."""
    body = _body(exc)
    if isinstance(body, dict) and isinstance(body.get("code"), int) and body["code"] >= 400:
        return body["code"]
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _server_message(exc: BaseException) -> str:
    body = _body(exc)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc) or type(exc).__name__


def describe(exc: BaseException) -> str:
    status = http_status(exc)
    return f"HTTP {status}: {_server_message(exc)}" if status is not None else f"{type(exc).__name__}: {exc}"


def _is_connection_error(exc: BaseException) -> bool:
    # requests and urllib3 come with kaggle and import without side effects.
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


def _is_server_side(exc: BaseException) -> bool:
    status = http_status(exc)
    return (status is not None and status >= 500) or (status is None and _is_connection_error(exc))


def is_transient(exc: BaseException) -> bool:
    """A failure that says nothing about the request itself: 5xx, 429, connection."""
    return http_status(exc) == 429 or _is_server_side(exc)


def to_kaggle_error(
    exc: BaseException, *, what: str, retry_command: str | None, attempts: int = 1
) -> KaggleError:
    """``exc`` as a :class:`KaggleError` that says what failed and what to do."""
    if isinstance(exc, KaggleError):
        return exc
    status = http_status(exc)
    detail = _server_message(exc)
    tries = f" after {attempts} attempts" if attempts > 1 else ""

    def error(message: str, kind: str) -> KaggleError:
        return KaggleError(message, retry_command=retry_command, kind=kind, status_code=status)

    if status is None:
        if _is_connection_error(exc):
            return error(
                f"{what} failed{tries}: could not reach Kaggle ({type(exc).__name__}: {exc}). "
                "Check the network connection and try again.",
                "connection",
            )
        return error(f"{what} failed: {type(exc).__name__}: {exc}", "error")
    lowered = detail.lower()
    if status == 403 and ("rule" in lowered or "competitions.participate" in lowered):
        return error(
            f"{what} failed: the competition rules have not been accepted for this account "
            f"(HTTP 403: {detail}). Accept them at {RULES_URL} (\"Join Competition\"), then retry.",
            "rules",
        )
    if status in (401, 403):
        return error(
            f"{what} failed: Kaggle rejected the credentials (HTTP {status}: {detail}). "
            "Check KAGGLE_USERNAME/KAGGLE_KEY, kaggle.json or the API token "
            "(regenerate it at https://www.kaggle.com/settings/api).",
            "credentials",
        )
    if status == 404:
        return error(
            f"{what} failed: Kaggle answered 404 ({detail}); is '{COMPETITION}' still open for submissions?",
            "not_found",
        )
    if status == 429 or status >= 500:
        return error(
            f"{what} failed{tries}: Kaggle server error (HTTP {status}: {detail}). "
            "Kaggle may be down or overloaded; try again later.",
            "server",
        )
    return error(f"{what} failed: Kaggle refused the request (HTTP {status}: {detail}).", "request")
