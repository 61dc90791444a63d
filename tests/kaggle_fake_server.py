"""A small fake of the Kaggle API for running the *real* ``kaggle`` client in tests.

kaggle 2.2 / kagglesdk talk to ``<endpoint>/api/v1/<Service>/<Method>`` with a
JSON POST per call; with ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` the endpoint is
``http://localhost``. The client uses ``requests`` with ``trust_env``, so
pointing ``HTTP_PROXY`` at this server routes every call (API calls, the
redirected data download and the blob upload PUT) here, in this process and
in a ``kaggle`` CLI subprocess alike. The server therefore accepts both
absolute-form request targets (``POST http://localhost/api/v1/...``, as sent to
a proxy) and plain paths.

It only binds 127.0.0.1 and never connects anywhere. Faults are scripted per
endpoint with :meth:`FakeKaggleServer.script`; every request is recorded.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import io
import json
import threading
import zipfile
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

COMPETITION_SERVICE = "competitions.CompetitionApiService"
API_PREFIX = f"/api/v1/{COMPETITION_SERVICE}/"
# Host the client believes it talks to (kagglesdk's LOCAL endpoint).
FAKE_HOST = "http://localhost"

TINY_TRAIN = "label," + ",".join(f"pixel{i}" for i in range(784)) + "\n" + "\n".join(
    f"{d}," + ",".join(str((d * 7 + i) % 256) for i in range(784)) for d in range(10)
) + "\n"
TINY_TEST = ",".join(f"pixel{i}" for i in range(784)) + "\n" + "\n".join(
    ",".join(str((r + i) % 256) for i in range(784)) for r in range(3)
) + "\n"
TINY_SAMPLE = "ImageId,Label\n1,0\n2,0\n3,0\n"


def make_zip(files: dict[str, str | bytes]) -> bytes:
    """Zip ``{name: content}`` in memory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


def default_data_zip() -> bytes:
    """A digit-recognizer-shaped archive: 10 train rows, 3 test rows."""
    return make_zip(
        {"train.csv": TINY_TRAIN, "test.csv": TINY_TEST, "sample_submission.csv": TINY_SAMPLE}
    )


@dataclass
class Fault:
    """One scripted answer replacing an endpoint's normal behaviour.

    Attributes:
        status: HTTP status to answer with.
        message: Error message; sent as Kaggle does, ``{"code", "message"}`` JSON.
        body: Exact JSON body to send instead (e.g. a 200 without ``ref``).
        json_error: False sends ``message`` as text/plain (like a gateway 5xx page).
        drop: Close the connection without any answer (a connection error).
        after: Do the normal work first (e.g. create the submission), then
            answer with the fault: an ambiguous failure.
    """

    status: int = 500
    message: str | None = None
    body: Any = None
    json_error: bool = True
    drop: bool = False
    after: bool = False


@dataclass
class RecordedRequest:
    """A request as it reached the server."""

    method: str
    path: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def endpoint(self) -> str:
        """RPC method name (``"CreateSubmission"``), ``"upload"``, ``"data"`` or the path."""
        if self.path.startswith(API_PREFIX):
            return self.path[len(API_PREFIX):]
        if self.path.startswith("/upload/"):
            return "upload"
        if self.path.startswith("/files/"):
            return "data"
        return self.path

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


@dataclass
class FakeKaggleServer:
    """Fake Kaggle competitions API on 127.0.0.1 (see module docstring).

    Attributes:
        username, key: Credentials the server accepts (HTTP basic auth, as the
            client sends a legacy API key); others get 401. ``None`` accepts any.
        data_zip: Archive served for DownloadDataFiles.
        limits: GetSubmissionLimits answer (camelCase, as on the wire).
        pending_polls: GetSubmission/ListSubmissions answers that still say
            PENDING before a submission reaches ``final_status``.
        final_status: ``"COMPLETE"`` or ``"ERROR"``.
        public_score: ``publicScore`` string for COMPLETE submissions.
        error_description: ``errorDescription`` for ERROR submissions.
        flaky: Answer HTTP 503 to this many requests before serving each
            one, on every endpoint: every call then needs ``flaky + 1``
            attempts, as from a Kaggle that is overloaded but up.
        requests: Every request received, in order.
        submissions: Submissions created, newest last.
    """

    username: str | None = "fake-user"
    key: str | None = "fake-key"
    data_zip: bytes = field(default_factory=default_data_zip)
    limits: dict[str, Any] = field(
        default_factory=lambda: {"numToday": 1, "numTotal": 7, "numAllowedNow": 4, "limitedByTotal": False}
    )
    pending_polls: int = 0
    final_status: str = "COMPLETE"
    public_score: str = "0.98765"
    error_description: str = "Submission must have 28000 rows"
    flaky: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    submissions: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._faults: dict[str, deque[Fault]] = {}
        self._blobs: dict[str, bytes] = {}
        self._blob_names: dict[str, str] = {}
        self._polls: dict[int, int] = {}
        self._flaky_seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "FakeKaggleServer":
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        # A short poll interval keeps shutdown() (every test teardown) fast.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-kaggle", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeKaggleServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Use as HTTP_PROXY (or as kagglesdk's endpoint)."""
        return f"http://127.0.0.1:{self.port}"

    # -- scripting & inspection -----------------------------------------
    def script(self, endpoint: str, *faults: Fault) -> None:
        """Queue ``faults`` for ``endpoint`` (an RPC name, ``"upload"`` or ``"data"``).

        Each request to the endpoint consumes one fault; afterwards it behaves normally.
        """
        with self._lock:
            self._faults.setdefault(endpoint, deque()).extend(faults)

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]

    @property
    def endpoints(self) -> list[str]:
        """Endpoint names of all requests, in order."""
        return [r.endpoint for r in self.requests]

    @property
    def uploaded(self) -> list[bytes]:
        """Bodies of all blob uploads (PUTs), in order."""
        return [r.body for r in self.requests if r.endpoint == "upload"]

    def _next_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(endpoint)
            if queue:
                return queue.popleft()
            if self.flaky:
                seen = self._flaky_seen[endpoint] = self._flaky_seen.get(endpoint, 0) + 1
                if seen % (self.flaky + 1):
                    return Fault(503, "Service Unavailable (flaky)")
            return None

    # -- behaviour ---------------------------------------------------------
    def _rpc(self, method: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        """Normal answer of an RPC: ``(status, json_body or None, extra headers)``."""
        if method == "DownloadDataFiles":
            return 302, None, {"Location": f"{FAKE_HOST}/files/{body.get('competitionName', 'x')}.zip"}
        if method == "GetSubmissionLimits":
            return 200, dict(self.limits), {}
        if method == "StartSubmissionUpload":
            with self._lock:
                token = f"blob-token-{len(self._blobs) + 1}"
                self._blobs[token] = b""
                self._blob_names[token] = body.get("fileName", "")
            return 200, {"token": token, "createUrl": f"{FAKE_HOST}/upload/{token}"}, {}
        if method == "CreateSubmission":
            token = body.get("blobFileTokens", "")
            with self._lock:
                if token not in self._blobs:
                    return 400, {"code": 400, "message": f"Unknown blob token {token!r}"}, {}
                ref = 1000 + len(self.submissions) + 1
                self.submissions.append(
                    {
                        "ref": ref,
                        "fileName": self._blob_names.get(token, "submission.csv"),
                        "description": body.get("submissionDescription", ""),
                        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                        "status": "PENDING",
                        "totalBytes": len(self._blobs[token]),
                    }
                )
                self._polls[ref] = 0
                self.limits["numToday"] = self.limits.get("numToday", 0) + 1
                self.limits["numAllowedNow"] = max(0, self.limits.get("numAllowedNow", 0) - 1)
            return 200, {"message": "Successfully submitted to Digit Recognizer", "ref": ref}, {}
        if method == "GetSubmission":
            ref = body.get("ref")
            with self._lock:
                sub = next((s for s in self.submissions if s["ref"] == ref), None)
                if sub is None:
                    return 404, {"code": 404, "message": f"Submission {ref} not found"}, {}
                self._advance(sub)
                return 200, dict(sub), {}
        if method == "ListSubmissions":
            with self._lock:
                for sub in self.submissions:
                    self._advance(sub)
                return 200, {"submissions": [dict(s) for s in reversed(self.submissions)]}, {}
        return 404, {"code": 404, "message": f"Unknown method {method}"}, {}

    def _advance(self, sub: dict[str, Any]) -> None:
        if sub["status"] != "PENDING":
            return
        self._polls[sub["ref"]] += 1
        if self._polls[sub["ref"]] > self.pending_polls:
            sub["status"] = self.final_status
            if self.final_status == "COMPLETE":
                sub["publicScore"] = self.public_score
            else:
                sub["errorDescription"] = self.error_description


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKaggleServer
    protocol_version = "HTTP/1.0"  # one request per connection keeps the server simple

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self._send(status, body, headers=headers)

    def _send_fault(self, fault: Fault) -> None:
        if fault.drop:
            self.close_connection = True
            return
        if fault.body is not None:
            self._send_json(fault.status, fault.body)
        elif fault.json_error:
            self._send_json(fault.status, {"code": fault.status, "message": fault.message or "Fault"})
        else:
            self._send(fault.status, (fault.message or "").encode(), content_type="text/plain")

    def _handle(self) -> None:
        fake = self.fake
        path = urlsplit(self.path).path if "://" in self.path else self.path.split("?", 1)[0]
        body = self._read_body()
        record = RecordedRequest(self.command, path, self.path, dict(self.headers.items()), body)
        fake.requests.append(record)
        endpoint = record.endpoint

        if self.command == "CONNECT":
            # Something tried HTTPS (e.g. the PROD endpoint): refuse instead of tunnelling out.
            self._send(405, b"fake Kaggle server does not tunnel", "text/plain")
            return

        fault = fake._next_fault(endpoint)
        if fault is not None and not fault.after:
            self._send_fault(fault)
            return

        if path.startswith(API_PREFIX) and self.command == "POST":
            if fake.username is not None and not self._authorized():
                self._send_json(401, {"code": 401, "message": "Unauthenticated"})
                return
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                self._send_json(400, {"code": 400, "message": "Body is not JSON"})
                return
            status, answer, headers = fake._rpc(endpoint, payload)
            if fault is not None:  # ``after``: the work is done, the answer is lost
                self._send_fault(fault)
            else:
                self._send_json(status, answer, headers)
            return

        if endpoint == "upload" and self.command == "PUT":
            token = path.rsplit("/", 1)[-1]
            with fake._lock:
                if token not in fake._blobs:
                    self._send(404, b"unknown upload", "text/plain")
                    return
                fake._blobs[token] = body
            self._send_json(200, {})
            return

        if endpoint == "data" and self.command in ("GET", "HEAD"):
            self._send(
                200,
                fake.data_zip,
                content_type="application/zip",
                headers={"Last-Modified": email.utils.formatdate(usegmt=True)},
            )
            return

        self._send_json(404, {"code": 404, "message": f"No route for {self.command} {path}"})

    def _authorized(self) -> bool:
        import base64

        expected = base64.b64encode(f"{self.fake.username}:{self.fake.key}".encode()).decode()
        return self.headers.get("Authorization", "") == f"Basic {expected}"

    do_GET = do_POST = do_PUT = do_HEAD = do_CONNECT = _handle
