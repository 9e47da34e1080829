"""The non-I/O half of the SDK: configuration, request building, retry decisions, error mapping.

``Client`` and ``AsyncClient`` (``_client.py``) only add the I/O loop around these pieces, so the
pieces here are plain functions that unit tests can call without any server.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Protocol, TypeVar

import httpx
import pydantic

from contrail.client._exceptions import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ContrailError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UnprocessableEntityError,
)
from contrail.client.types import ErrorResponse

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "NOT_GIVEN",
    "BaseClient",
    "NotGiven",
    "RequestOptions",
    "make_status_error",
    "parse_retry_after",
    "retry_delay",
    "should_retry_exception",
    "should_retry_status",
]

VERSION = "0.1.0"
DEFAULT_BASE_URL: Final = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT: Final = httpx.Timeout(60.0, connect=5.0)
DEFAULT_MAX_RETRIES: Final = 2
INITIAL_RETRY_DELAY: Final = 0.5
MAX_RETRY_DELAY: Final = 8.0
# A Retry-After above this is not honoured (the computed backoff is used instead).
MAX_RETRY_AFTER: Final = 60.0
ENV_API_KEY: Final = "CONTRAIL_API_KEY"
ENV_BASE_URL: Final = "CONTRAIL_BASE_URL"


class NotGiven:
    """Marks an argument that was not passed, where ``None`` means something (no timeout)."""

    _instance: NotGiven | None = None

    def __new__(cls) -> NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven()

TimeoutTypes = httpx.Timeout | float | None


# ---------------------------------------------------------------------------------------------
# Retry decisions
# ---------------------------------------------------------------------------------------------


def should_retry_status(status_code: int, headers: Mapping[str, str] | None = None) -> bool:
    """408 (request timeout), 429 (rate limit) and every 5xx are worth another try.

    409 is retried only when the server sent a Retry-After: this API answers 409 + Retry-After
    while a request with the same idempotency key is still in flight (transient), and a bare 409
    when the key was used with another body (permanent: no retry can fix it)."""
    if status_code == 409:
        return headers is not None and parse_retry_after(headers) is not None
    return status_code in (408, 429) or status_code >= 500


def should_retry_exception(exc: BaseException) -> bool:
    """Timeouts and network failures are retried; malformed URLs and the like are not."""
    if isinstance(exc, httpx.TimeoutException):
        return True
    return isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait as the server asked, or ``None`` when it did not say (or said nonsense).

    Understands ``retry-after-ms`` (milliseconds), and ``retry-after`` as seconds or an HTTP date.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0 and value == value:  # not NaN
            return value
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 and seconds == seconds else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def retry_delay(
    retries_done: int,
    retry_after: float | None = None,
    *,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to sleep before the next attempt.

    A server's Retry-After between 0 and ``MAX_RETRY_AFTER`` wins; otherwise exponential backoff
    ``0.5 * 2**retries_done`` capped at 8 s, minus up to 25 % jitter (so the result lies in
    ``[0.75 * base, base]``)."""
    if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER:
        return retry_after
    base = min(INITIAL_RETRY_DELAY * 2.0 ** max(retries_done, 0), MAX_RETRY_DELAY)
    return base * (1.0 - 0.25 * rand())


# ---------------------------------------------------------------------------------------------
# Status -> exception
# ---------------------------------------------------------------------------------------------

_STATUS_ERRORS: Final[dict[int, type[APIStatusError]]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def _parse_error_body(response: httpx.Response) -> ErrorResponse | None:
    try:
        return ErrorResponse.model_validate_json(response.content)
    except (pydantic.ValidationError, ValueError):
        return None


def make_status_error(response: httpx.Response) -> APIStatusError:
    """The typed exception for an error answer (the response must have been read)."""
    body = _parse_error_body(response)
    status = response.status_code
    if body is not None:
        message = f"{status} {body.error.type}: {body.error.message}"
    else:
        text = response.text.strip()
        reason = response.reason_phrase or "error"
        message = f"{status} {reason}" + (f": {text[:500]}" if text else "")
    if status == 429:
        return RateLimitError(
            message,
            response=response,
            body=body,
            retry_after=parse_retry_after(response.headers),
        )
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    return cls(message, response=response, body=body)


# ---------------------------------------------------------------------------------------------
# Configuration and request building
# ---------------------------------------------------------------------------------------------


@dataclass
class RequestOptions:
    """One logical request; the I/O loop builds a fresh ``httpx.Request`` from it per attempt."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: Callable[[], Any] | None = None
    """Called once per attempt to get a fresh body (a bytes object or a (async) byte iterator),
    so that a streamed upload restarts from its first byte when it is retried."""
    headers: Mapping[str, str] = field(default_factory=dict)
    max_retries: int | None = None
    timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    with_auth: bool = True
    """False for an absolute presigned URL (a dataset file on S3): the API key is not sent to
    another host, and S3 refuses a request that carries two authorisations."""


class SyncAPI(Protocol):
    """What a sync resource needs from its client (``Client`` provides it)."""

    @property
    def _http(self) -> httpx.Client: ...

    def request(self, options: RequestOptions) -> httpx.Response: ...

    def stream(self, options: RequestOptions) -> AbstractContextManager[httpx.Response]: ...


class AsyncAPI(Protocol):
    """What an async resource needs from its client (``AsyncClient`` provides it)."""

    @property
    def _http(self) -> httpx.AsyncClient: ...

    async def request(self, options: RequestOptions) -> httpx.Response: ...

    def stream(self, options: RequestOptions) -> AbstractAsyncContextManager[httpx.Response]: ...


HttpxClientT = TypeVar("HttpxClientT", httpx.Client, httpx.AsyncClient)


def _resolve_timeout(timeout: TimeoutTypes | NotGiven) -> httpx.Timeout:
    if isinstance(timeout, NotGiven):
        return DEFAULT_TIMEOUT
    if isinstance(timeout, httpx.Timeout):
        return timeout
    return httpx.Timeout(timeout)


class BaseClient(Generic[HttpxClientT]):
    """Configuration and request building shared by ``Client`` and ``AsyncClient``."""

    api_key: str
    base_url: httpx.URL
    timeout: httpx.Timeout
    max_retries: int
    _http: HttpxClientT

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | httpx.URL | None,
        timeout: TimeoutTypes | NotGiven,
        max_retries: int,
        default_headers: Mapping[str, str] | None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        if not key:
            raise ContrailError(
                f"No API key: pass api_key=... or set the {ENV_API_KEY} environment variable "
                "(`contrail up` prints one for the local stack)."
            )
        url = base_url if base_url is not None else os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.api_key = key
        self.base_url = httpx.URL(str(url).rstrip("/") + "/")
        self.timeout = _resolve_timeout(timeout)
        self.max_retries = max_retries
        self._default_headers = dict(default_headers or {})

    # -- request building ---------------------------------------------------------------------

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def default_headers(self) -> dict[str, str]:
        return {
            "Accept": "application/json",
            "User-Agent": f"contrail-python/{VERSION}",
            **self.auth_headers,
            **self._default_headers,
        }

    def _url(self, path: str) -> httpx.URL:
        return self.base_url.join(path.lstrip("/"))

    def _build_request(self, options: RequestOptions) -> httpx.Request:
        headers = {**self.default_headers, **options.headers}
        if not options.with_auth:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        timeout = self.timeout if isinstance(options.timeout, NotGiven) else options.timeout
        content = options.content() if options.content is not None else None
        return self._http.build_request(
            options.method,
            self._url(options.path),
            params=_clean_params(options.params),
            json=options.json,
            content=content,
            headers=headers,
            timeout=timeout,
        )

    def _copy_settings(
        self, timeout: TimeoutTypes | NotGiven, max_retries: int | None
    ) -> dict[str, Any]:
        """The constructor arguments of a copy of this client (see ``with_options``)."""
        return {
            "api_key": self.api_key,
            "base_url": self.base_url,
            "timeout": self.timeout if isinstance(timeout, NotGiven) else timeout,
            "max_retries": self.max_retries if max_retries is None else max_retries,
            "default_headers": self._default_headers,
            "http_client": self._http,
        }

    def _max_retries_for(self, options: RequestOptions) -> int:
        return self.max_retries if options.max_retries is None else options.max_retries

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={str(self.base_url)!r})"


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if params is None:
        return None
    return {k: v for k, v in params.items() if v is not None}


def check_id(name: str, value: str) -> str:
    """Refuse an empty path argument early (it would silently address the collection)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"Expected a non-empty {name}, got {value!r}")
    if "/" in value:
        raise ValueError(f"{name} must not contain '/': {value!r}")
    return value
