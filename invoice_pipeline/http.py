"""The one HTTP layer every source uses: pooled session, timeouts, retries, pluggable auth.

Retries (tenacity) cover connection errors, timeouts, 429 (honouring Retry-After), 5xx and
bodies cut off mid-JSON. A 401 renews the credential once per call. Errors name the source,
the endpoint (method and path, never the query string, which may hold a token) and the status;
a timeout or a body that is not JSON also names the URL (path and query, credentials masked),
which says which page or record it was. The source's `timeout` bounds a whole attempt (connect,
headers, body), however slowly a server drips its answer. Secrets are redacted from every message
in every form an API may echo them in (URL-encoded, JSON-escaped, inside base64).
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json as jsonlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit

import certifi
import requests
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError, MaxRetryError, NewConnectionError, ProtocolError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from invoice_pipeline import jsonio
from invoice_pipeline.errors import AuthExpired, RetryableResponse, SourceError

log = logging.getLogger("invoice_pipeline.http")

MIN_SECRET_LENGTH = 4
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
Validator = Callable[[int, Any], None]


class Auth:
    """A credential scheme. Subclasses log in lazily, decorate requests and renew on demand
    (sources/auth.py's TokenAuth does that for every API with a login call)."""

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def renew(self) -> None:
        """Obtain a fresh credential (called once per request after a 401 / AuthExpired)."""

    def secrets(self) -> list[str]:
        """Credentials obtained at run time (tokens, session ids) to scrub from messages."""
        return []

    def close(self) -> None:
        """Release server-side state (e.g. CRM.COM's token release)."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Any
    body: Any
    size: int


class _Transient(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None, hint: str = ""):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.hint = hint  # what to check when this is the error we give up on


@dataclass
class HttpStats:
    api_calls: int = 0
    retries: int = 0


class HttpClient:
    def __init__(
        self,
        source: str,
        base_url: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        pool_size: int = 8,
        secrets: Sequence[str] = (),
        credential_keys: Sequence[str] = (),
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_cap: float = 120.0,
    ):
        self.source = source
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.auth: Auth | None = None
        self.credential_keys = ", ".join(credential_keys) or "credentials"
        self.stats = HttpStats()
        self._static_secrets = [s for s in secrets if s]
        self._wait = wait_exponential_jitter(multiplier=backoff_initial, max=backoff_max)
        self._retry_after_cap = retry_after_cap
        self._lock = threading.Lock()
        self.pool = _pool_for(self.base_url, maxsize=max(pool_size, 2) * 2)
        # `timeout` bounds a whole attempt (connect, headers and body), not each read: a server
        # dripping a byte at a time must not hold a run for hours. total= bounds the connect and the
        # wait for the headers; _read_body() bounds the body by the same deadline.
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout, total=timeout)
        self._redactions: tuple[tuple[str, ...], list[str]] = ((), [])

    @property
    def _reach_hint(self) -> str:
        """An API never reached is most often a wrong base_url: say which one was tried."""
        parts = urlsplit(self.base_url)
        where = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return f"; check the source's base_url ({where}) and that the API is reachable"

    # -- secrets -------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """The text with every secret replaced by ***, in every form an API may echo it back in
        (as sent in a form or query, JSON-escaped, inside base64 such as a Basic auth header)."""
        secrets = tuple(s for s in [*self._static_secrets, *(self.auth.secrets() if self.auth else [])]
                        if s and len(s) >= MIN_SECRET_LENGTH)
        if secrets != self._redactions[0]:
            self._redactions = (secrets, _encodings(secrets))
        for form in self._redactions[1]:
            if form in text:
                text = text.replace(form, "***")
        return text

    def error(self, message: str, endpoint: str | None = None, status: int | None = None) -> SourceError:
        return SourceError(self.source, self.redact(message), endpoint=endpoint, status=status)

    # -- requests --------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        use_auth: bool = True,
        validate: Validator | None = None,
        raw_query: str | None = None,
    ) -> HttpResponse:
        """One logical call: retried on transient failures, renewed once per attempt on auth expiry.

        The renewal budget is per attempt, not per call: backoffs between transient retries can
        outlast a short-lived credential, so a 401 after a retry earns a fresh login; a 401 right
        after a renewal still fails (wrong credentials never loop).

        raw_query is appended verbatim (SoftwareOne's RQL must not be percent-encoded).
        """
        endpoint = f"{method} {path}"
        renewed = [False]

        def attempt() -> HttpResponse:
            renewed[0] = False
            return self._attempt(method, path, endpoint, params, json, data, headers, use_auth, validate, raw_query, renewed)

        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait_for,
            retry=retry_if_exception_type(_Transient),
            before_sleep=lambda state: self._log_retry(endpoint, state),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Transient as exc:
            raise self.error(
                f"gave up after {self.max_retries + 1} attempts: {exc}{exc.hint}", endpoint=endpoint, status=exc.status
            ) from None

    def _wait_for(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = self._wait(state)
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), self._retry_after_cap)
        return backoff

    def _log_retry(self, endpoint: str, state: RetryCallState) -> None:
        with self._lock:
            self.stats.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "source '%s': %s: %s; retry %d/%d in %.2fs",
            self.source, endpoint, self.redact(str(exc)), state.attempt_number, self.max_retries,
            state.next_action.sleep if state.next_action else 0.0,
        )

    def _attempt(self, method, path, endpoint, params, json, data, headers, use_auth, validate, raw_query, renewed):
        req_headers = {"Accept": "application/json", **(headers or {})}
        req_params = dict(params or {})
        if use_auth and self.auth is not None:
            self.auth.apply(req_headers, req_params)
        masked = {k for k in req_params if k not in (params or {})}  # what the auth added: credentials
        url = self.base_url + path
        if raw_query:
            url += "?" + raw_query
        with self._lock:
            self.stats.api_calls += 1
        body_bytes, content_type = _encode_body(json, data)
        if content_type:
            req_headers.setdefault("Content-Type", content_type)
        query = urlencode([(k, v) for k, v in req_params.items() if v is not None], doseq=True)
        if query:
            url += ("&" if raw_query else "?") + query
        deadline = time.monotonic() + self.timeout
        _deadline.value = deadline  # read by _Watched.getresponse() (the wait for the headers)
        try:
            # Redirects are followed as requests did (Authorization is dropped on a cross-host one);
            # every other failure comes back at once: retrying is tenacity's job, above.
            resp = self.pool.request(method, url, body=body_bytes, headers=req_headers, timeout=self._timeout,
                                     retries=_FOLLOW_REDIRECTS_ONLY, preload_content=False)
            content = _read_body(resp, deadline)
        except Exception as raised:  # noqa: BLE001 - mapped to what it means for the source below
            exc = raised.reason if isinstance(raised, MaxRetryError) and raised.reason is not None else raised
            if isinstance(exc, NewConnectionError):  # first: urllib3 makes it a subclass of its TimeoutError
                raise _Transient(f"connection failed: {type(exc).__name__}", hint=self._reach_hint) from None
            if isinstance(exc, Urllib3Timeout | _Deadline) or time.monotonic() >= deadline:
                raise _Transient(f"timed out after {self.timeout:g}s (the whole request is bounded by the "
                                 f"source's timeout) at {self._where(url, masked)}", hint=self._reach_hint) from None
            if isinstance(exc, ProtocolError | SSLError | OSError):
                raise _Transient(f"connection failed: {type(exc).__name__}", hint=self._reach_hint) from None
            if isinstance(exc, HTTPError):
                raise _Transient(f"transfer failed: {type(exc).__name__}") from None
            raise
        status = resp.status
        body = _parse_json(content)
        if status in RETRY_STATUSES:
            raise _Transient(f"HTTP {status}: {_summary(body, content)}", status, _retry_after(resp))
        try:
            if status == 401:
                raise AuthExpired(_summary(body, content))
            if status >= 400:
                raise self.error(f"{_summary(body, content)}", endpoint=endpoint, status=status)
            if body is _INVALID:
                raise _Transient(f"{_not_json(resp, content)} at {self._where(url, masked)}", status)
            if validate is not None:
                validate(status, body)
        except AuthExpired as exc:
            if not use_auth or self.auth is None or renewed[0]:
                raise self.error(
                    f"authentication failed: {exc}; check the source's credentials ({self.credential_keys})", endpoint=endpoint, status=status
                ) from None
            renewed[0] = True
            log.info("source '%s': %s: credential rejected, logging in again", self.source, endpoint)
            self.auth.renew()
            return self._attempt(method, path, endpoint, params, json, data, headers, use_auth, validate, raw_query, renewed)
        except RetryableResponse as exc:
            raise _Transient(str(exc), status, exc.retry_after) from None
        return HttpResponse(status, resp.headers, body, len(content))

    def _where(self, url: str, masked: Collection[str] = ()) -> str:
        """Path and query of a URL (which page or record), without credentials: parameters the auth
        added or named like a credential are masked, and known secrets redacted."""
        parts = urlsplit(url)
        pairs = [(k, "***" if k in masked or _SECRET_PARAM.search(k) else v)
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*:/,()'$ ") if pairs else ""
        return self.redact(parts.path + (f"?{query}" if query else ""))

    def close(self) -> None:
        try:
            if self.auth is not None:
                self.auth.close()
        finally:
            self.pool.clear()


_INVALID = object()
_FOLLOW_REDIRECTS_ONLY = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=10,
                                       raise_on_redirect=True, raise_on_status=False)


_SECRET_PARAM = re.compile(r"(?i)token|key|secret|passw|pwd|sig|auth|session|credential")
_READ_CHUNK = 256 * 1024


class _Deadline(Exception):
    """The attempt's total time ran out while the body was still arriving."""


def _read_body(resp: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
    """The whole body, or _Deadline once the attempt's deadline passes (however slowly it drips).

    Each wait for more bytes is bounded by the time left (the socket's timeout is lowered to it),
    so a drip of one byte per second fails at the deadline instead of after every byte arrived.
    """
    chunks: list[bytes] = []
    sock = getattr(getattr(resp, "connection", None), "sock", None)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Deadline
            if sock is not None:
                sock.settimeout(left)
            chunk = resp.read1(_READ_CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
    except BaseException:
        resp.close()  # half-read: the connection cannot be reused
        resp.release_conn()
        raise
    resp.release_conn()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _parse_json(content: bytes) -> Any:
    if not content:
        return None
    try:
        return jsonio.loads(content)
    except jsonio.JsonInvalid:
        return _INVALID


def _not_json(resp: urllib3.BaseHTTPResponse, content: bytes) -> str:
    """What came instead of JSON: cut off, or a page of another kind (a proxy's or login HTML page)."""
    start = content.lstrip()[:1]
    if start in (b"{", b"["):
        try:
            jsonio.loads(content)
            why = ""
        except jsonio.JsonInvalid as exc:  # the parser's own words: where it broke, or nesting too deep
            why = f": {str(exc)[:120]}"
        return f"response body is not valid JSON ({len(content)} bytes{why}; cut off?)"
    kind = resp.headers.get("Content-Type") or "no Content-Type"
    sample = " ".join(content[:80].decode("utf-8", "replace").split())
    return f"response is not JSON but {kind} ({len(content)} bytes, starting {sample!r})"


def _encodings(secrets: Sequence[str]) -> list[str]:
    """Every form of each secret worth scrubbing, longest first (see HttpClient.redact)."""
    forms: set[str] = set()
    for secret in secrets:
        raw = secret.encode()
        variants = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), quote_plus(secret, safe=""),
                    jsonlib.dumps(secret)[1:-1], jsonlib.dumps(secret, ensure_ascii=False)[1:-1]}
        variants |= {v.replace("%", "%25") for v in list(variants) if "%" in v}  # encoded twice
        variants |= {_lower_escapes(v) for v in list(variants) if "%" in v}
        forms |= variants
        # base64 of any text holding the secret ("user:secret" in Basic auth) contains one of three
        # runs, one per alignment of the secret to base64's 3-byte groups: scrub those runs.
        for shift in range(3):
            encoded = base64.b64encode(b"\0" * shift + raw).decode().rstrip("=")
            skip = (0, 2, 3)[shift]
            end = (len(raw) + shift) * 8 // 6
            core = encoded[skip:end]
            if len(core) >= 6:
                forms |= {core, core.replace("+", "-").replace("/", "_")}
    return sorted((f for f in forms if len(f) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def _lower_escapes(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def _summary(body: Any, content: bytes) -> str:
    """The API's own error message, whatever shape its error body has."""
    if isinstance(body, dict):
        for key in ("message", "Message", "detail", "title", "errorCode"):
            if body.get(key):
                return str(body[key])
        status = body.get("status")
        if isinstance(status, dict) and (status.get("message") or status.get("code")):
            return f"{status.get('code')}: {status.get('message') or status.get('description') or ''}".strip()
    text = content[:200].decode("utf-8", "replace").strip()
    return text or "(empty body)"


def _pool_for(base_url: str, maxsize: int) -> urllib3.PoolManager:
    """urllib3 directly: requests' session machinery costs more CPU per call than the pipeline's
    own work per invoice (benchmarks/RESULTS.md, "Figures behind design choices in the code"). Proxy settings are read from the
    environment once (HTTP(S)_PROXY, NO_PROXY), certificates from REQUESTS_CA_BUNDLE or
    SSL_CERT_FILE if set, else certifi's bundle, as requests would."""
    ca_certs = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or certifi.where()
    proxy = requests.utils.get_environ_proxies(base_url).get(urlsplit(base_url).scheme)
    if proxy:
        manager: urllib3.PoolManager = urllib3.ProxyManager(proxy, num_pools=2, maxsize=maxsize, ca_certs=ca_certs)
    else:
        manager = urllib3.PoolManager(num_pools=2, maxsize=maxsize, ca_certs=ca_certs)
    manager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
    return manager


# -- the deadline while the headers arrive ----------------------------------------------------------
# urllib3's timeouts bound each socket read, so a server dripping its status line and headers a byte
# at a time could hold a request forever. The connections below register their socket with one
# watchdog thread while they wait for the headers; past the attempt's deadline it shuts the socket
# down, and the request fails as a timeout. (The body is bounded by _read_body.)
_deadline = threading.local()


class _Watchdog:
    def __init__(self) -> None:
        self._heap: list[list[Any]] = []  # [deadline, seq, socket or None once done]
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, sock: socket.socket) -> list[Any]:
        entry = [deadline, next(self._seq), sock]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()
        return entry

    @staticmethod
    def done(entry: list[Any]) -> None:
        entry[2] = None  # left in the heap until its deadline comes up: no search, no lock

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2] is None:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                left = self._heap[0][0] - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                sock = heapq.heappop(self._heap)[2]
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
                except OSError:
                    pass


_WATCHDOG = _Watchdog()


class _Watched:
    def getresponse(self):  # type: ignore[no-untyped-def]
        deadline = getattr(_deadline, "value", None)
        sock = getattr(self, "sock", None)
        entry = _WATCHDOG.watch(deadline, sock) if deadline is not None and sock is not None else None
        try:
            return super().getresponse()  # type: ignore[misc]
        finally:
            if entry is not None:
                _WATCHDOG.done(entry)


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _encode_body(json: Any, data: Any) -> tuple[bytes | None, str | None]:
    if json is not None:
        return jsonio.dumps(json), "application/json"
    if isinstance(data, dict):
        return urlencode(data, doseq=True).encode(), "application/x-www-form-urlencoded"
    if isinstance(data, str):
        return data.encode(), None
    return data, None


def _retry_after(resp: urllib3.BaseHTTPResponse) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
