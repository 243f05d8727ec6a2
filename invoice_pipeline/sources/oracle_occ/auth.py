"""Oracle OCC authentication: a password-grant bearer token (POST /ccstore/v1/login), refreshed
before it expires (POST /ccstore/v1/refresh) and obtained again after a 401."""

from __future__ import annotations

import logging
from typing import Any

from invoice_pipeline.errors import SourceError
from invoice_pipeline.http import HttpClient
from invoice_pipeline.sources.auth import TokenAuth

log = logging.getLogger("invoice_pipeline.oracle_occ")


class OracleTokenAuth(TokenAuth):
    """Password-grant bearer token, refreshed before it expires and re-obtained on a 401."""

    RENEW_AT = 0.8  # share of the token's life after which it is refreshed

    def __init__(self, http: HttpClient, username: str, password: str):
        super().__init__(http)
        self._form = {"grant_type": "password", "username": username, "password": password}

    def _token_of(self, body: Any, endpoint: str) -> tuple[str, float | None]:
        if not isinstance(body, dict) or not body.get("access_token"):
            raise self._http.error("login answered without an access_token", endpoint=endpoint)
        return body["access_token"], float(body.get("expires_in") or 300)

    def login(self) -> tuple[str, float | None]:
        resp = self._http.request("POST", "/ccstore/v1/login", data=self._form, use_auth=False)
        return self._token_of(resp.body, "POST /ccstore/v1/login")

    def refresh(self, token: str) -> tuple[str, float | None]:
        try:
            resp = self._http.request(
                "POST", "/ccstore/v1/refresh", headers={"Authorization": f"Bearer {token}"}, use_auth=False
            )
            return self._token_of(resp.body, "POST /ccstore/v1/refresh")
        except SourceError as exc:
            log.info("source '%s': token refresh failed (%s); logging in again", self._http.source, exc.status)
            return self._logged_in()

    def decorate(self, headers: dict[str, str], params: dict[str, Any], token: str) -> None:
        headers["Authorization"] = f"Bearer {token}"
