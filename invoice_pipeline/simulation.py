"""Shared harness of the built-in API simulators: a threaded loopback HTTP server with fault knobs.

Each source's simulator.py subclasses SimulatorServer, owns a deterministic data set generated
from a seed, and implements `handle`. The harness injects latency, 5xx, 429 (with Retry-After),
dropped connections and bodies cut off mid-JSON, at rates set by Knobs, so tests and benchmarks
exercise the clients' retry paths against the same server they use for the happy path.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson


@dataclass
class Knobs:
    latency: float = 0.0  # seconds added to every request
    error_rate: float = 0.0  # share of requests answered 500/502/503/504
    rate_limit_rate: float = 0.0  # share answered 429 with Retry-After
    retry_after: float = 0.0  # the Retry-After value sent with 429
    drop_rate: float = 0.0  # share of connections closed without an answer
    truncate_rate: float = 0.0  # share of 200 bodies cut off mid-JSON
    token_lifetime: float | None = None  # seconds; None = the API's documented lifetime
    inconsistent_rate: float = 0.0  # share of invoices whose lines do not add up (tests of the audit checks)
    seed: int = 42


@dataclass
class SimRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    raw_query: str
    headers: Any
    body: bytes

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass
class SimResponse:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class SimulatorServer:
    """Base class: subclasses set `base_path` and implement `handle`."""

    base_path = ""

    def __init__(self, knobs: Knobs | None = None, host: str = "127.0.0.1", port: int = 0):
        self.knobs = knobs or Knobs()
        self._fault_rng = random.Random(self.knobs.seed * 7919 + 1)
        self._lock = threading.RLock()
        self.requests: Counter[str] = Counter()
        self._httpd = _Server((host, port), self._handler_class())
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    def start(self) -> SimulatorServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() would wait forever for a loop that never ran
            self._httpd.shutdown()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- to implement ------------------------------------------------------------------------
    def handle(self, request: SimRequest) -> SimResponse:  # pragma: no cover - interface
        raise NotImplementedError

    def source_config(self) -> dict[str, Any]:  # pragma: no cover - interface
        """The config block (README, "Running against real APIs") that points a source at this simulator."""
        raise NotImplementedError

    # -- faults ------------------------------------------------------------------------------
    def _draw_fault(self) -> str | None:
        k = self.knobs
        with self._lock:
            r = self._fault_rng.random()
        for name, rate in (("drop", k.drop_rate), ("5xx", k.error_rate), ("429", k.rate_limit_rate)):
            if r < rate:
                return name
            r -= rate
        return None

    def _should_truncate(self) -> bool:
        if not self.knobs.truncate_rate:
            return False
        with self._lock:
            return self._fault_rng.random() < self.knobs.truncate_rate

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = SimRequest(
                    self.command, parts.path, parse_qs(parts.query, keep_blank_values=True), parts.query, self.headers, body
                )
                with sim._lock:
                    sim.requests[parts.path] += 1
                if sim.knobs.latency:
                    time.sleep(sim.knobs.latency)
                fault = sim._draw_fault()
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "5xx":
                    with sim._lock:
                        status = sim._fault_rng.choice([500, 502, 503, 504])
                    response = SimResponse(status, {"message": "Simulated server error", "status": str(status)})
                elif fault == "429":
                    response = SimResponse(
                        429, {"message": "Too many requests"}, {"Retry-After": f"{sim.knobs.retry_after:g}"}
                    )
                else:
                    try:
                        response = sim.handle(request)
                    except Exception as exc:  # a simulator bug must show, not hang the client
                        response = SimResponse(500, {"message": f"simulator error: {exc!r}"})
                payload = response.body if isinstance(response.body, bytes) else orjson.dumps(response.body)
                if response.status == 200 and fault is None and sim._should_truncate():
                    payload = payload[: max(1, len(payload) // 2)]
                head = [f"HTTP/1.1 {response.status} {self.responses.get(response.status, ('',))[0]}"]
                headers = {"Content-Type": "application/json", "Content-Length": str(len(payload)), **response.headers}
                head += [f"{k}: {v}" for k, v in headers.items()]
                # One write per response: headers and body in a single segment (no Nagle delay).
                self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        return Handler


@dataclass
class PageTamper:
    """A list endpoint paging the odd ways real tenants were seen to (tests of the clients' guards).

    kind: "empty" - the page holds no items yet says there are more (Oracle `hasMore: true`,
          SoftwareOne an unchanged `total`); "short" - the page holds only its first `keep`
          items (Oracle: and says it is the last, `hasMore: false`); "ignore_offset" - every page
          is the first one (the server ignores `offset`).
    page: the page tampered with (offset // limit, 0-based); "ignore_offset": every page after the first.
    times: responses left to tamper with; < 0: all of them (a fault that does not go away).
    """

    kind: str
    page: int = 1
    times: int = -1
    keep: int = 10
    served: int = 0  # responses tampered with so far

    def __post_init__(self) -> None:
        if self.kind not in ("empty", "short", "ignore_offset"):
            raise ValueError(f"PageTamper.kind must be 'empty', 'short' or 'ignore_offset', got {self.kind!r}")

    def take(self, page: int) -> str | None:
        """The tampering to apply to this page, if any (call under the simulator's lock)."""
        hit = page >= 1 if self.kind == "ignore_offset" else page == self.page
        if not hit or self.times == 0:
            return None
        if self.times > 0:
            self.times -= 1
        self.served += 1
        return self.kind
