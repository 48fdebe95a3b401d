"""Domain errors. Each carries the envelope `code`; the HTTP adapter maps classes to status codes."""

from __future__ import annotations


class ChambersError(Exception):
    """Base of every error a client may see."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ChambersError):
    code = "INVALID_REQUEST"


class Unauthorized(ChambersError):
    code = "UNAUTHORIZED"


class Forbidden(ChambersError):
    code = "FORBIDDEN"


class PolicyDenied(ChambersError):
    code = "POLICY_DENIED"


class NotFound(ChambersError):
    code = "NOT_FOUND"


class Conflict(ChambersError):
    code = "CONFLICT"


class SessionEnded(Conflict):
    code = "SESSION_ENDED"


class TurnConflict(Conflict):
    """Another turn holds the session."""

    code = "TURN_CONFLICT"

    def __init__(self, active_turn_id: str, retry_after_s: int) -> None:
        super().__init__("A turn is already active on this session")
        self.active_turn_id = active_turn_id
        self.retry_after_s = retry_after_s


class RateLimited(ChambersError):
    code = "RATE_LIMITED"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PayloadTooLarge(ChambersError):
    code = "PAYLOAD_TOO_LARGE"


class Unavailable(ChambersError):
    code = "UNAVAILABLE"


class Overloaded(Unavailable):
    """This process refuses new turns for now (too many running, or its event loop runs late)."""

    code = "OVERLOADED"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
