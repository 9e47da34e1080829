"""Typed errors of the SDK.

Two families: the request never got an answer (:class:`APIConnectionError`, with
:class:`APITimeoutError` as a special case) or the server answered with an error status
(:class:`APIStatusError` and one subclass per status the API documents). Every status error keeps
the ``httpx.Response`` and the parsed ``ErrorResponse`` body when the server sent one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

    from contrail.client.types import ErrorDetail, ErrorResponse, Job

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ContrailError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "UnprocessableEntityError",
    "WaitTimeoutError",
]


class ContrailError(Exception):
    """Base class of every error the SDK raises on purpose."""


class APIError(ContrailError):
    """A request to the API failed."""

    message: str
    request: httpx.Request | None

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class APIConnectionError(APIError):
    """The server could not be reached, or the connection broke before an answer."""

    def __init__(
        self, message: str = "Connection error.", *, request: httpx.Request | None = None
    ) -> None:
        super().__init__(message, request=request)


class APITimeoutError(APIConnectionError):
    """The request timed out (connect, read, write or pool timeout)."""

    def __init__(
        self, message: str = "Request timed out.", *, request: httpx.Request | None = None
    ) -> None:
        super().__init__(message, request=request)


class APIStatusError(APIError):
    """The server answered with a 4xx or 5xx status."""

    response: httpx.Response
    status_code: int
    body: ErrorResponse | None
    """The parsed error body, or ``None`` when the answer was not an ``ErrorResponse``."""

    def __init__(
        self, message: str, *, response: httpx.Response, body: ErrorResponse | None
    ) -> None:
        super().__init__(message, request=response.request)
        self.response = response
        self.status_code = response.status_code
        self.body = body

    @property
    def type(self) -> str | None:
        """The server's error type (``error.type``), if any."""
        return self.body.error.type if self.body is not None else None

    @property
    def details(self) -> list[ErrorDetail]:
        """Line- or field-level details of the error (empty when the server sent none)."""
        return list(self.body.error.details) if self.body is not None else []


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404: unknown id, or a job/file of another tenant."""


class ConflictError(APIStatusError):
    """409: e.g. an idempotency key reused with another request body."""


class RequestTooLargeError(APIStatusError):
    """413: the upload is over the server's size limit."""


class UnprocessableEntityError(APIStatusError):
    """422: the input did not validate; :attr:`details` holds one entry per bad line or field."""


class RateLimitError(APIStatusError):
    """429: rate limit or quota. :attr:`retry_after` is the server's hint in seconds, if any."""

    retry_after: float | None

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        body: ErrorResponse | None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, response=response, body=body)
        self.retry_after = retry_after


class InternalServerError(APIStatusError):
    """Any 5xx."""


class WaitTimeoutError(ContrailError):
    """``jobs.wait`` gave up before the job reached a terminal status."""

    job: Job

    def __init__(self, message: str, *, job: Job) -> None:
        super().__init__(message)
        self.job = job
