"""The shared HTTP layer against a real local server (no mocking of requests)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import pytest

from invoice_pipeline.errors import AuthExpired, RetryableResponse, SourceError
from invoice_pipeline.http import Auth, HttpClient
from invoice_pipeline.simulation import Knobs, SimRequest, SimResponse, SimulatorServer

SECRET = "tok-9f8e7d6c5b4a"


class ScriptedServer(SimulatorServer):
    """Answers each path from a queue of scripted responses (the last one repeats)."""

    def __init__(self, knobs: Knobs | None = None):
        super().__init__(knobs)
        self.script: dict[str, deque[SimResponse | bytes]] = {}
        self.seen: list[SimRequest] = []

    def handle(self, request: SimRequest) -> SimResponse:
        self.seen.append(request)
        queue = self.script[request.path]
        item = queue.popleft() if len(queue) > 1 else queue[0]
        return SimResponse(200, item) if isinstance(item, bytes) else item


@pytest.fixture
def server():
    with ScriptedServer() as srv:
        yield srv


def client(srv: ScriptedServer, **kw: Any) -> HttpClient:
    kw.setdefault("max_retries", 3)
    return HttpClient("src_a", srv.base_url, backoff_initial=0.01, backoff_max=0.02, secrets=[SECRET], **kw)


def test_retries_5xx_then_succeeds(server: ScriptedServer) -> None:
    server.script["/x"] = deque([SimResponse(503, {"message": "busy"}), SimResponse(502, {}), SimResponse(200, {"ok": 1})])
    http = client(server)
    assert http.request("GET", "/x").body == {"ok": 1}
    assert http.stats.api_calls == 3 and http.stats.retries == 2


def test_honours_retry_after(server: ScriptedServer) -> None:
    server.script["/x"] = deque([SimResponse(429, {"message": "slow down"}, {"Retry-After": "0.4"}), SimResponse(200, {"ok": 1})])
    started = time.monotonic()
    assert client(server).request("GET", "/x").body == {"ok": 1}
    assert time.monotonic() - started >= 0.4


def test_gives_up_naming_source_endpoint_status_without_secrets(server: ScriptedServer) -> None:
    server.script["/api/items"] = deque([SimResponse(500, {"message": f"internal failure for token {SECRET}"})])
    with pytest.raises(SourceError) as err:
        client(server, max_retries=2).request("GET", "/api/items", params={"token": SECRET})
    text = str(err.value)
    assert "src_a" in text and "GET /api/items" in text and "HTTP 500" in text and "3 attempts" in text
    assert SECRET not in text
    assert len(server.seen) == 3


def test_client_error_is_not_retried(server: ScriptedServer) -> None:
    server.script["/x"] = deque([SimResponse(400, {"errorCode": "E1", "message": "bad q", "status": "400"})])
    with pytest.raises(SourceError, match="bad q") as err:
        client(server).request("GET", "/x")
    assert err.value.status == 400 and len(server.seen) == 1


def test_cut_off_json_is_retried(server: ScriptedServer) -> None:
    server.script["/x"] = deque([b'{"items": [1, 2', b'{"items": [1, 2]}'])
    assert client(server).request("GET", "/x").body == {"items": [1, 2]}


def test_dropped_connections_are_retried() -> None:
    with ScriptedServer(Knobs(drop_rate=0.5, seed=3)) as srv:
        srv.script["/x"] = deque([SimResponse(200, {"ok": 1})])
        http = client(srv, max_retries=8)
        for _ in range(10):
            assert http.request("GET", "/x").body == {"ok": 1}
        assert http.stats.retries > 0


class CountingAuth(Auth):
    def __init__(self) -> None:
        self.token = "old"
        self.renewals = 0

    def apply(self, headers: dict, params: dict) -> None:
        headers["Authorization"] = f"Bearer {self.token}"

    def renew(self) -> None:
        self.renewals += 1
        self.token = f"new{self.renewals}"


def test_401_renews_once_then_fails(server: ScriptedServer) -> None:
    server.script["/x"] = deque([SimResponse(401, {"message": "expired"}), SimResponse(200, {"ok": 1})])
    http = client(server)
    http.auth = auth = CountingAuth()
    assert http.request("GET", "/x").body == {"ok": 1}
    assert auth.renewals == 1
    assert server.seen[-1].headers["Authorization"] == "Bearer new1"

    server.script["/y"] = deque([SimResponse(401, {"message": "The user is not authenticated."})])
    with pytest.raises(SourceError, match="authentication failed.*credentials"):
        http.request("GET", "/y")
    assert auth.renewals == 2  # one renewal for this call, then a clear failure


def test_validator_sees_body_errors_on_http_200(server: ScriptedServer) -> None:
    server.script["/x"] = deque(
        [SimResponse(200, {"status": "BUSY"}), SimResponse(200, {"status": "EXPIRED"}), SimResponse(200, {"status": "OK"})]
    )
    http = client(server)
    http.auth = auth = CountingAuth()

    def validate(status: int, body: Any) -> None:
        if body["status"] == "BUSY":
            raise RetryableResponse("busy")
        if body["status"] == "EXPIRED":
            raise AuthExpired("token expired")

    assert http.request("GET", "/x", validate=validate).body == {"status": "OK"}
    assert auth.renewals == 1


def test_timeout_is_retried_then_reported() -> None:
    with ScriptedServer(Knobs(latency=0.3)) as srv:
        srv.script["/slow"] = deque([SimResponse(200, {"ok": 1})])
        with pytest.raises(SourceError, match="timed out"):
            client(srv, timeout=0.05, max_retries=1).request("GET", "/slow")


def test_proxy_from_the_environment_and_no_proxy(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.script["/via"] = deque([b'{"ok": true}'])
    # The scripted server plays the proxy: the API host is never resolved, the proxy gets the call.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    proxied = HttpClient("src", "http://api.example.invalid:8080", max_retries=0)
    assert proxied.request("GET", "/via").body == {"ok": True}
    assert server.seen[-1].path == "/via"
    # NO_PROXY wins: a dead proxy is never used for a host listed there.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = HttpClient("src", f"http://127.0.0.1:{server.port}", max_retries=0)
    assert direct.request("GET", "/via").body == {"ok": True}


def test_redirects_are_followed_and_failures_still_map(server: ScriptedServer) -> None:
    server.script["/old"] = deque([SimResponse(302, b"", {"Location": "/new"})])
    server.script["/new"] = deque([b'{"moved": true}'])
    http = client(server, max_retries=0)
    assert http.request("GET", "/old").body == {"moved": True}
    assert [r.path for r in server.seen] == ["/old", "/new"]
    # a refused connection is still "connection failed", not a redirect/retry error of urllib3
    with pytest.raises(SourceError, match="connection failed"):
        HttpClient("src", "http://127.0.0.1:9", max_retries=0).request("GET", "/x")


# -- issue 19: probing from outside ---------------------------------------------------------------
class DripServer:
    """A raw socket server that sends its headers at once, then the body one byte every `gap` s."""

    def __init__(self, body: bytes, gap: float):
        import socket
        import threading

        self.body, self.gap = body, gap
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def at_once(self) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(self.body)

    def dripped(self) -> bytes:
        return self.body

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(65536)
                    conn.sendall(self.at_once())
                    drip = self.dripped()
                    for i in range(len(drip)):
                        if self.stop.wait(self.gap):
                            return
                        conn.sendall(drip[i:i + 1])
                except OSError:
                    continue

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(timeout=5)


def test_timeout_bounds_the_whole_request_not_each_read() -> None:
    """A 725-byte body dripped a byte per 0.2 s used to take 145 s and 'succeed' with timeout 3s."""
    drip = DripServer(b'{"items": [' + b"1, " * 236 + b"1]}", gap=0.2)
    try:
        http = HttpClient("src_drip", drip.base_url, timeout=1.0, max_retries=0)
        started = time.monotonic()
        with pytest.raises(SourceError) as err:
            http.request("GET", "/api/items", params={"offset": 500})
        elapsed = time.monotonic() - started
    finally:
        drip.close()
    assert elapsed < 2.5, elapsed
    text = str(err.value)
    assert "src_drip" in text and "timed out after 1s" in text and "/api/items?offset=500" in text, text


def test_html_page_with_status_200_is_named_with_its_url(server: ScriptedServer) -> None:
    server.script["/api/items"] = deque([SimResponse(200, b"<!DOCTYPE html><html><body>Please log in</body></html>",
                                                     {"Content-Type": "text/html"})])
    with pytest.raises(SourceError) as err:
        client(server, max_retries=1).request("GET", "/api/items", params={"offset": 40, "access_token": SECRET})
    text = str(err.value)
    assert "src_a" in text and "not JSON but text/html" in text and "Please log in" in text, text
    assert "/api/items?offset=40&access_token=***" in text and SECRET not in text, text


def test_numbers_arrive_exactly(server: ScriptedServer) -> None:
    from decimal import Decimal

    server.script["/x"] = deque([b'{"amount": 1234567890123.4567, "big": 123456789012345678901234567890, '
                                 b'"noise": 0.30000000000000004, "small": 12.5, "id": 9007199254740993}'])
    body = client(server).request("GET", "/x").body
    assert body["amount"] == Decimal("1234567890123.4567") and str(body["amount"]) == "1234567890123.4567"
    assert body["big"] == 123456789012345678901234567890 and str(body["big"]) == "123456789012345678901234567890"
    assert body["id"] == 9007199254740993 and type(body["id"]) is int
    assert float(body["noise"]) == 0.30000000000000004 and body["small"] == 12.5


def test_a_lone_surrogate_does_not_make_the_page_unreadable(server: ScriptedServer) -> None:
    server.script["/x"] = deque([b'{"items": [{"id": "a", "note": "\\ud800"}, {"id": "b"}]}'])
    body = client(server).request("GET", "/x").body
    assert [i["id"] for i in body["items"]] == ["a", "b"]


@pytest.mark.parametrize("echo", ["quote", "quote_plus", "json", "basic"])
def test_secrets_echoed_back_in_any_encoding_are_redacted(server: ScriptedServer, echo: str) -> None:
    import base64
    import json
    from urllib.parse import quote, quote_plus

    secret = "pw-SECRET-123!/+ é"
    shown = {"quote": quote(secret, safe=""), "quote_plus": quote_plus(secret), "json": json.dumps(secret)[1:-1],
             "basic": base64.b64encode(f"alice:{secret}".encode()).decode()}[echo]
    server.script["/login"] = deque([SimResponse(400, f"bad request: password={shown}".encode())])
    http = HttpClient("src_a", server.base_url, max_retries=0, secrets=[secret])
    with pytest.raises(SourceError) as err:
        http.request("POST", "/login", data={"password": secret})
    assert "bad request: password=" in str(err.value)
    assert shown not in str(err.value) and secret not in str(err.value), str(err.value)


class HeaderDripServer(DripServer):
    """Drips its status line and headers themselves, a byte every `gap` s (and forever)."""

    def at_once(self) -> bytes:
        return b""

    def dripped(self) -> bytes:
        return b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 100_000


def test_a_server_dripping_its_headers_is_cut_off_at_the_deadline() -> None:
    drip = HeaderDripServer(b"", gap=0.1)
    try:
        http = HttpClient("src_drip", drip.base_url, timeout=1.0, max_retries=0)
        started = time.monotonic()
        with pytest.raises(SourceError, match="timed out after 1s"):
            http.request("GET", "/api/items/42")
        elapsed = time.monotonic() - started
    finally:
        drip.close()
    assert elapsed < 2.5, elapsed


def test_the_url_in_an_error_masks_what_the_auth_added(server: ScriptedServer) -> None:
    class QueryAuth(Auth):
        def apply(self, headers: dict, params: dict) -> None:
            params["sid"] = "session-5f5f5f"  # a name that does not look like a credential

    server.script["/api/items"] = deque([SimResponse(200, b"<html>maintenance</html>", {"Content-Type": "text/html"})])
    http = client(server, max_retries=0)
    http.auth = QueryAuth()
    with pytest.raises(SourceError) as err:
        http.request("GET", "/api/items", params={"offset": 7})
    assert "/api/items?offset=7&sid=***" in str(err.value) and "session-5f5f5f" not in str(err.value), str(err.value)
