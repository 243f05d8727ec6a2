"""Expected failures: each carries a message a person can act on, shown without a traceback."""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the CLI reports as one clear paragraph."""


class ConfigError(PipelineError):
    """The configuration file is missing, malformed or names a wrong value."""


class SourceError(PipelineError):
    """A source API failed in a way retries could not fix (or must not retry)."""

    def __init__(self, source: str, message: str, *, endpoint: str | None = None, status: int | None = None):
        self.source = source
        self.endpoint = endpoint
        self.status = status
        where = f" {endpoint}" if endpoint else ""
        code = f" (HTTP {status})" if status else ""
        super().__init__(f"source '{source}'{where}{code}: {message}")


class AuthExpired(Exception):
    """Raised by a response validator when the credential must be renewed and the call repeated."""


class RetryableResponse(Exception):
    """Raised by a response validator for a transient error the API reported in its body."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after
