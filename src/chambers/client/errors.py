"""Typed errors of the SDK. Each carries the envelope's `code` and `message`, the HTTP status, the
`X-Request-Id` of the response (quote it when you report a problem) and the response headers.

    try:
        chat.send("hello")
    except TurnConflict as exc:      # 409 TURN_CONFLICT
        print(exc.active_turn_id, exc.retry_after)
    except ChambersError as exc:     # any other error
        print(exc.code, exc.status_code, exc.request_id)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx


class ChambersError(Exception):
    """Base of every error the SDK raises."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "ERROR",
        status_code: int | None = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status_code = status_code
        self.request_id = request_id
        self.headers: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}
        self.turn_id: str | None = self.headers.get("x-turn-id")
        """The turn a failed `message` ran (its `X-Turn-Id`), if any."""

    def __str__(self) -> str:
        where = [self.code]
        if self.status_code is not None:
            where.append(f"HTTP {self.status_code}")
        if self.request_id:
            where.append(self.request_id)
        return f"{self.message} ({', '.join(where)})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, status_code={self.status_code})"


class APIConnectionError(ChambersError):
    """The server could not be reached, or the connection broke (after the SDK's own retries)."""


class BadRequest(ChambersError):
    """400: the request is invalid (`INVALID_REQUEST`), or the session's model is not usable."""


class ModelNotConfigured(BadRequest):
    """400 `MODEL_NOT_CONFIGURED`: unknown provider, or its API key is not set on the server."""


class Unauthorized(ChambersError):
    """401: no key, or an unknown or revoked one (or no sign-in on `/api`)."""


class Forbidden(ChambersError):
    """403: the key lacks a scope, or the caller lacks a grant."""


class PolicyDenied(Forbidden):
    """403 `POLICY_DENIED`: the agent's policy refused the request."""


class NotFound(ChambersError):
    """404: no such object in the caller's organisation, or no such route."""


class MethodNotAllowed(ChambersError):
    """405: the path exists, not with this method."""


class Conflict(ChambersError):
    """409: the request conflicts with the object's state."""


class TurnConflict(Conflict):
    """409 `TURN_CONFLICT`: another turn holds the session (`active_turn_id`), retry after `retry_after` s."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.active_turn_id: str | None = self.headers.get("x-active-turn-id")
        self.retry_after: float | None = _seconds(self.headers.get("retry-after"))


class SessionEnded(Conflict):
    """409 `SESSION_ENDED`: the session has ended; create a new one to continue."""


class QuestionClosed(Conflict):
    """409 `QUESTION_CLOSED`: the question was already answered, expired or dropped."""


class PayloadTooLarge(ChambersError):
    """413: the request body is over the server's limit."""


class TurnLimit(ChambersError):
    """422 `TURN_LIMIT`: the turn needed more model requests than the server allows."""


class RateLimited(ChambersError):
    """429: slow down; `retry_after` is in seconds."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after: float | None = _seconds(self.headers.get("retry-after"))


class ServerError(ChambersError):
    """5xx: the server (or the turn) failed; `request_id` finds it in the server log."""


class ProviderError(ServerError):
    """502 `PROVIDER_ERROR`: the model provider refused or failed the request."""


class Overloaded(ServerError):
    """503 `OVERLOADED`: the server sheds load and stored nothing; retry after `retry_after` seconds."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after: float | None = _seconds(self.headers.get("retry-after"))


_BY_CODE: dict[str, type[ChambersError]] = {
    "INVALID_REQUEST": BadRequest,
    "MODEL_NOT_CONFIGURED": ModelNotConfigured,
    "UNAUTHORIZED": Unauthorized,
    "FORBIDDEN": Forbidden,
    "POLICY_DENIED": PolicyDenied,
    "NOT_FOUND": NotFound,
    "METHOD_NOT_ALLOWED": MethodNotAllowed,
    "TURN_CONFLICT": TurnConflict,
    "SESSION_ENDED": SessionEnded,
    "QUESTION_CLOSED": QuestionClosed,
    "PAYLOAD_TOO_LARGE": PayloadTooLarge,
    "TURN_LIMIT": TurnLimit,
    "RATE_LIMITED": RateLimited,
    "PROVIDER_ERROR": ProviderError,
    "OVERLOADED": Overloaded,
}
_BY_STATUS: dict[int, type[ChambersError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: PayloadTooLarge,
    422: BadRequest,
    429: RateLimited,
}


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def error_class(code: str, status_code: int | None) -> type[ChambersError]:
    """The most specific class: by code, else by status, else `ServerError` (5xx) or the base."""
    by_code = _BY_CODE.get(code)
    if by_code is not None and (status_code is None or status_code < 500 or issubclass(by_code, ServerError)):
        return by_code
    if status_code is not None:
        if status_code >= 500:
            return ServerError
        return _BY_STATUS.get(status_code, ChambersError)
    return ServerError if code in ("INTERNAL", "INTERRUPTED") else ChambersError


def make_error(
    code: str,
    message: str,
    status_code: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> ChambersError:
    """An error of the right class for an envelope `{"error": {"code", "message"}}`."""
    headers = dict(headers or {})
    request_id = next((v for k, v in headers.items() if k.lower() == "x-request-id"), None)
    cls = error_class(code, status_code)
    return cls(message, code=code, status_code=status_code, request_id=request_id, headers=headers)


def from_response(response: httpx.Response) -> ChambersError:
    """The error an HTTP error response stands for (read the body first on streams)."""
    code, message = "", ""
    try:
        body: Any = response.json()
    except (ValueError, json.JSONDecodeError, httpx.ResponseNotRead):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code") or "")
        message = str(body["error"].get("message") or "")
    if not message:
        try:
            message = response.text.strip()[:500] or response.reason_phrase
        except httpx.ResponseNotRead:
            message = response.reason_phrase
    return make_error(code or "HTTP_ERROR", message, response.status_code, response.headers)


def connection_error(exc: Exception, what: str) -> APIConnectionError:
    return APIConnectionError(f"{what}: {type(exc).__name__}: {exc}".rstrip(": "), code="CONNECTION_ERROR")
