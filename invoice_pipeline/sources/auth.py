"""One session/token credential for every client that logs in: locking, renew-if-current, expiry
(TokenAuth); and a static API key sent as a header (StaticTokenAuth).

A subclass says only what its API does: `login()` (obtain a token and, when known, its lifetime),
`decorate()` (put the token on a request) and, optionally, `refresh()` (a cheaper renewal before
expiry) and `replaced()` (a token given up before its end, e.g. to release it later).

- Lazy: the first request logs in.
- Expiry: a token is renewed before use once RENEW_AT of its lifetime has passed, or (IDLE_LIMIT)
  once it has not been used for that many seconds (sessions that die when idle).
- Renew-if-current: after a 401 (or `errors.AuthExpired` from a validator) the http layer calls
  `renew()`. Parallel workers that sent the same token all fail together; the first one to take the
  lock logs in, the others find that the token they sent is no longer the current one and simply
  retry with the new token. So N workers do not log in N times.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pydantic import SecretStr

from invoice_pipeline.http import Auth, HttpClient


class TokenAuth(Auth):
    """A token obtained by a login call, renewed before expiry and at most once per rejected token."""

    RENEW_AT = 0.8  # share of a token's lifetime after which it is renewed before use
    IDLE_LIMIT: float | None = None  # seconds unused after which it is renewed before use (None: no limit)

    def __init__(self, http: HttpClient):
        self._http = http
        self._lock = threading.Lock()
        self._sent = threading.local()  # the token this thread last sent (see renew)
        self._token: str | None = None
        self._issued = 0.0
        self._renew_after = float("inf")
        self._last_used = 0.0
        self.logins = 0

    # -- what a subclass provides ------------------------------------------------------------
    def login(self) -> tuple[str, float | None]:  # pragma: no cover - interface
        """Obtain a new token from the API: (token, lifetime in seconds or None when unknown)."""
        raise NotImplementedError

    def refresh(self, token: str) -> tuple[str, float | None]:
        """Renew a token about to expire (default: log in again). Runs under the lock."""
        return self._logged_in()

    def replaced(self, token: str, issued: float) -> None:
        """A token still valid was replaced before its end (default: nothing to do)."""

    def decorate(self, headers: dict[str, str], params: dict[str, Any], token: str) -> None:  # pragma: no cover
        """Put the token on a request (a header, a query parameter...)."""
        raise NotImplementedError

    # -- the common part -----------------------------------------------------------------------
    def _logged_in(self) -> tuple[str, float | None]:
        result = self.login()
        self.logins += 1
        return result

    def _store(self, obtained: tuple[str, float | None]) -> None:
        token, lifetime = obtained
        self._token = token
        self._issued = time.monotonic()
        self._renew_after = self._issued + lifetime * self.RENEW_AT if lifetime is not None else float("inf")

    def _due(self, now: float) -> bool:
        idle = self.IDLE_LIMIT is not None and now - self._last_used > self.IDLE_LIMIT
        return idle or now >= self._renew_after

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        with self._lock:
            now = time.monotonic()
            if self._token is None:
                self._store(self._logged_in())
            elif self._due(now):
                old, issued = self._token, self._issued
                self._store(self.refresh(old))
                if self._token != old:
                    self.replaced(old, issued)
            self._last_used = time.monotonic()
            token = self._token
        self._sent.token = token
        self.decorate(headers, params, token)

    def renew(self) -> None:
        """After a rejected token: log in again, unless another thread already did since we sent it."""
        failed = getattr(self._sent, "token", None)
        with self._lock:
            if self._token is None or self._token == failed:
                self._store(self._logged_in())

    @property
    def token(self) -> str | None:
        """The current token (None before the first login)."""
        return self._token

    def secrets(self) -> list[str]:
        return [self._token] if self._token else []


class StaticTokenAuth(Auth):
    """A long-lived API key sent as one header on every request: nothing to renew, so a 401 is
    repeated once (http layer) then fatal. `template` places the key, e.g. "Bearer {}"."""

    def __init__(self, header: str, token: SecretStr | str, template: str = "{}"):
        self._header, self._template = header, template
        self._token = token.get_secret_value() if isinstance(token, SecretStr) else token

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers[self._header] = self._template.format(self._token)

    def secrets(self) -> list[str]:
        return [self._token]
