"""Raw-response access, as in openai-python: ``client.jobs.with_raw_response.retrieve(id)``
returns an :class:`APIResponse` holding the HTTP response (its status, its headers) beside the
parsed value, ``.parse()``.

A wrapper runs the resource's own method, so validation, retries and errors are the same as a
plain call; a context variable set for the duration of that call collects the HTTP answer the
method's request got. Only methods that send exactly one request are wrapped (not ``wait``,
``download`` or the streamed ``results`` / ``errors``).
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Awaitable, Callable
from typing import Generic, ParamSpec, TypeVar

import httpx

__all__ = ["APIResponse", "async_to_raw_response_wrapper", "to_raw_response_wrapper"]

T = TypeVar("T")
P = ParamSpec("P")

_CAPTURE: contextvars.ContextVar[list[httpx.Response] | None] = contextvars.ContextVar(
    "contrail_raw_response", default=None
)


def record_response(response: httpx.Response) -> None:
    """Called by the resources' request helpers with every answer they parse."""
    captured = _CAPTURE.get()
    if captured is not None:
        captured.append(response)


class APIResponse(Generic[T]):
    """One API answer: the ``httpx.Response`` and the value the method parsed from it."""

    def __init__(self, http_response: httpx.Response, parsed: T) -> None:
        self.http_response = http_response
        self._parsed = parsed

    @property
    def headers(self) -> httpx.Headers:
        return self.http_response.headers

    @property
    def status_code(self) -> int:
        return self.http_response.status_code

    def parse(self) -> T:
        """What the plain method returns (a ``Job``, a page, ...)."""
        return self._parsed

    def __repr__(self) -> str:
        return f"<APIResponse [{self.status_code}] type={type(self._parsed).__name__}>"


def _last(captured: list[httpx.Response], name: str) -> httpx.Response:
    if not captured:  # a method that sends no request cannot be wrapped (a programming error)
        raise RuntimeError(f"{name} sent no request to take a raw response from")
    return captured[-1]


def to_raw_response_wrapper(method: Callable[P, T]) -> Callable[P, APIResponse[T]]:
    """``method`` returning an :class:`APIResponse` of its value instead of the value."""

    @functools.wraps(method)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> APIResponse[T]:
        captured: list[httpx.Response] = []
        token = _CAPTURE.set(captured)
        try:
            parsed = method(*args, **kwargs)
        finally:
            _CAPTURE.reset(token)
        return APIResponse(_last(captured, method.__name__), parsed)

    return wrapped


def async_to_raw_response_wrapper(
    method: Callable[P, Awaitable[T]],
) -> Callable[P, Awaitable[APIResponse[T]]]:
    """The async twin of :func:`to_raw_response_wrapper` (the method's result is awaited)."""

    @functools.wraps(method)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> APIResponse[T]:
        captured: list[httpx.Response] = []
        token = _CAPTURE.set(captured)
        try:
            parsed = await method(*args, **kwargs)
        finally:
            _CAPTURE.reset(token)
        return APIResponse(_last(captured, method.__name__), parsed)

    return wrapped
