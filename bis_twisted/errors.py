"""Errors a user can cause, each carrying the HTTP status it answers with.

Routes raise these; one handler per Klein app turns them into ``{"ERROR": ...}``.
"""

from typing import Any, Dict, Optional


class BisError(Exception):
    """Base of every user-facing error: ``str(err)`` is the message, ``status`` the HTTP code."""

    status: int = 500
    retry_after: Optional[int] = None  # seconds, for 503 answers

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra: Dict[str, Any] = extra  # more fields for the JSON answer


class BadRequest(BisError):
    status = 400


class Unauthorized(BisError):
    status = 401


class Forbidden(BisError):
    status = 403


class TooManyRequests(BisError):
    """An API key over its rate; ``retry_after`` is set per answer."""

    status = 429


class UnknownSignature(BisError):
    status = 404


class NotFound(BisError):
    status = 404


class Conflict(BisError):
    status = 409


class BodyTooLarge(BisError):
    status = 413


class UnsupportedMediaType(BisError):
    status = 415


class ServiceUnavailable(BisError):
    status = 503
    retry_after: Optional[int] = 1


class ServerStopped(ServiceUnavailable):
    """Stopped by an operator or ``DISABLED``: it stays down until ``/start_server``."""

    retry_after = None


class ServerFailed(ServiceUnavailable):
    """It keeps failing before it is ready: a retry will not help until it is fixed."""

    retry_after = None


class QueueFull(ServiceUnavailable):
    """All workers are busy and the waiting queue is at MAX_QUEUE."""


class ReloadFailed(BisError):
    """A reload's new process did not start (its load error); the old one keeps serving."""

    status = 500


class BadGateway(BisError):
    status = 502


class GatewayTimeout(BisError):
    status = 504


class ConfigError(Exception):
    """A configuration or endpoint file that cannot be used; the message is one line
    naming the file, the endpoint and the key, and the process exits non-zero."""


class EndpointLoadError(ConfigError):
    """An endpoint file that cannot be imported or has no usable worker class."""
