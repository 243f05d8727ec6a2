"""Agvance authentication: POST /Login with the ApiKey header and the user's credentials gives a
SessionID, sent with the ApiKey on every call; the session dies after 60 idle minutes."""

from __future__ import annotations

from typing import Any

from invoice_pipeline.http import HttpClient
from invoice_pipeline.sources.auth import TokenAuth

LOGIN_PATH = "/Login"


class AgvanceSessionAuth(TokenAuth):
    """Login once per session; the session dies after 60 idle minutes -> log in again once."""

    IDLE_LIMIT = 55 * 60  # seconds: re-login proactively a little before the documented 60

    def __init__(self, http: HttpClient, api_key: str, username: str, password: str, database_id: str):
        super().__init__(http)
        self._api_key = api_key
        self._credentials = {"UserName": username, "Password": password, "DatabaseID": database_id}

    @property
    def _session(self) -> str | None:
        return self._token

    def _check_login(self, status: int, body: Any) -> None:
        if not isinstance(body, dict):
            raise self._http.error("login answered with no JSON object", endpoint=f"POST {LOGIN_PATH}", status=status)
        if str(body.get("Status", "")).lower() != "success" or not body.get("SessionID"):
            raise self._http.error(
                f"login failed: {body.get('Message') or body.get('Status') or 'no SessionID'}; "
                "check api_key, username, password and database_id",
                endpoint=f"POST {LOGIN_PATH}",
                status=status,
            )

    def login(self) -> tuple[str, float | None]:
        resp = self._http.request(
            "POST", LOGIN_PATH, headers={"ApiKey": self._api_key}, json=self._credentials,
            use_auth=False, validate=self._check_login,
        )
        return str(resp.body["SessionID"]), None  # no fixed lifetime: it dies when idle

    def decorate(self, headers: dict[str, str], params: dict[str, Any], token: str) -> None:
        headers["ApiKey"] = self._api_key
        headers["SessionID"] = token

    def secrets(self) -> list[str]:
        return [s for s in (self._api_key, self._token) if s]
