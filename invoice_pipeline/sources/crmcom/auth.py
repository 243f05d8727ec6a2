"""CRM.COM authentication: a token from POST /authentication/token, sent as the `token` query
parameter, released at the end of the run; and the `status` object every body carries (checked
on every call, the login's too)."""

from __future__ import annotations

import logging
import time
from typing import Any

from invoice_pipeline.errors import AuthExpired, SourceError
from invoice_pipeline.http import HttpClient, Validator
from invoice_pipeline.sources.auth import TokenAuth

log = logging.getLogger("invoice_pipeline.crmcom")


def status_validator(http: HttpClient, endpoint: str, what: str) -> Validator:
    """Every CRM.COM body has `status`; a code other than OK is an error even with HTTP 200."""

    def validate(status: int, body: Any) -> None:
        st = body.get("status") if isinstance(body, dict) else None
        if not isinstance(st, dict):
            raise http.error(f"{what}: response has no 'status' object", endpoint=endpoint, status=status)
        code = st.get("code")
        if code == "OK":
            return
        detail = st.get("message") or st.get("description") or ""
        if code == "INVALID_TOKEN":  # normally sent with HTTP 401; renew and repeat once either way
            raise AuthExpired(f"INVALID_TOKEN {detail}".strip())
        raise http.error(f"{what}: API error {code}: {detail}".rstrip(": "), endpoint=endpoint, status=status)

    return validate


class CrmTokenAuth(TokenAuth):
    """Token from POST authentication/token, sent as the `token` query parameter.

    Tokens live 2 hours and cannot be refreshed: a new one is obtained at RENEW_AT of that life,
    and once after INVALID_TOKEN. Tokens are released (token/release) at the end of the run.
    """

    RENEW_AT = 0.9

    def __init__(self, http: HttpClient, username: str, password: str, organisation: str, lifetime: float = 7200.0):
        super().__init__(http)
        self._credentials = {"username": username, "password": password, "organisation": organisation}
        self.lifetime = lifetime
        self._retired: list[tuple[str, float]] = []  # (token, issued) replaced before expiry: released at the end
        self._releasing: list[str] = []

    def login(self) -> tuple[str, float | None]:
        endpoint = "POST /authentication/token"
        what = f"login of user {self._credentials['username']!r} to organisation {self._credentials['organisation']!r}"
        body = self._http.request(
            "POST", "/authentication/token", json=self._credentials, use_auth=False,
            validate=status_validator(self._http, endpoint, what),
        ).body
        token = body.get("data", {}).get("token") if isinstance(body.get("data"), dict) else None
        if not token:
            raise self._http.error(f"{what}: answered without data.token", endpoint=endpoint)
        return str(token), self.lifetime

    def replaced(self, token: str, issued: float) -> None:
        self._retired.append((token, issued))

    def decorate(self, headers: dict[str, str], params: dict[str, Any], token: str) -> None:
        params["token"] = token

    def secrets(self) -> list[str]:
        return [t for t in (self._token, *(t for t, _ in self._retired), *self._releasing) if t]

    def close(self) -> None:
        """Release every token still valid; failures are logged, never raised (a run may be failing already)."""
        with self._lock:
            alive = time.monotonic() - self.lifetime
            tokens = [t for t, issued in self._retired if issued > alive] + ([self._token] if self._token else [])
            self._token, self._retired, self._releasing = None, [], tokens
        for token in tokens:
            try:
                self._http.request(
                    "POST", "/authentication/token/release", json={"token": token}, use_auth=False,
                    validate=status_validator(self._http, "POST /authentication/token/release", "token release"),
                )
            except SourceError as exc:
                log.warning("source '%s': could not release a token: %s", self._http.source, exc)
        self._releasing = []
