"""Errors that become HTTP responses in OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

from slimtune.errors import ServeError


class ApiError(ServeError):
    """A request the server answers with ``status`` and an OpenAI-shaped error body."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(ApiError):
    """400: the request is malformed or over a limit."""


class Unauthorized(ApiError):
    """401: no key, or a key that matches none."""

    status = 401
    type = "authentication_error"


class Forbidden(ApiError):
    """403: the key lacks the scope the route needs."""

    status = 403
    type = "permission_error"


class NotFound(ApiError):
    """404: the model (adapter) is unknown."""

    status = 404
    type = "not_found_error"


class TooLarge(ApiError):
    """413: the request body is over the limit."""

    status = 413


class RateLimited(ApiError):
    """429: the key's bucket is empty; Retry-After says when to come back."""

    status = 429
    type = "rate_limit_error"


class Unavailable(ApiError):
    """503: the queue is full or the server is stopping."""

    status = 503
    type = "server_error"


class AdapterLoadFailed(ApiError):
    """500: the adapter could not be loaded (corrupt blob, mismatched base); others keep serving."""

    status = 500
    type = "server_error"


class Timeout(ApiError):
    """504: the request ran past the server's timeout and was cancelled."""

    status = 504
    type = "timeout_error"
