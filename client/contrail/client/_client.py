"""``Client`` and ``AsyncClient``: the I/O twins around ``BaseClient``.

The two classes mirror each other line for line; only ``await``/``async`` differ. We keep two
hand-written twins (as httpx does) rather than generating one from the other: the async side
differs in more than keywords (threads for file work, a lazy paginator, ``aclose``), which an
unasync rewrite would need special cases for. tests/test_sdk_twins.py walks both public surfaces
(methods, parameters, defaults, return types, which side awaits) and fails on any drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from functools import cached_property
from types import TracebackType

import httpx

from contrail.client._base import (
    DEFAULT_MAX_RETRIES,
    NOT_GIVEN,
    BaseClient,
    NotGiven,
    RequestOptions,
    TimeoutTypes,
    make_status_error,
    parse_retry_after,
    retry_delay,
    should_retry_exception,
    should_retry_status,
)
from contrail.client._exceptions import APIConnectionError, APITimeoutError
from contrail.client.files import AsyncFiles, Files
from contrail.client.jobs import AsyncJobs, Jobs
from contrail.client.models import AsyncModels, Models

__all__ = ["AsyncClient", "Client"]

log = logging.getLogger("contrail.client")


class Client(BaseClient[httpx.Client]):
    """Synchronous client of the contrail API.

    ``Client()`` reads ``CONTRAIL_API_KEY`` and ``CONTRAIL_BASE_URL`` (default
    ``http://127.0.0.1:8000``) when the arguments are not given. Use it as a context manager or
    call :meth:`close`.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | httpx.URL | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=self.timeout, follow_redirects=True)

    def with_options(
        self, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN, max_retries: int | None = None
    ) -> Client:
        """A client like this one with another timeout or retry count, for one call or many
        (``client.with_options(timeout=5).jobs.retrieve(id)``), as in openai-python. It shares
        this client's connection pool; closing it leaves the pool open."""
        return Client(**self._copy_settings(timeout, max_retries))

    @cached_property
    def files(self) -> Files:
        return Files(self)

    @cached_property
    def jobs(self) -> Jobs:
        return Jobs(self)

    @cached_property
    def models(self) -> Models:
        return Models(self)

    # -- I/O ----------------------------------------------------------------------------------

    def request(self, options: RequestOptions) -> httpx.Response:
        """Send with retries; returns a read response with a 2xx status or raises."""
        response = self._send(options, stream=False)
        return response

    @contextlib.contextmanager
    def stream(self, options: RequestOptions) -> Iterator[httpx.Response]:
        """Like :meth:`request`, but the body is left unread for ``iter_lines``/``iter_bytes``."""
        response = self._send(options, stream=True)
        try:
            yield response
        finally:
            response.close()

    def _send(self, options: RequestOptions, *, stream: bool) -> httpx.Response:
        max_retries = self._max_retries_for(options)
        retries_done = 0
        while True:
            request = self._build_request(options)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if should_retry_exception(exc) and retries_done < max_retries:
                    delay = retry_delay(retries_done)
                    log.info("%s %s failed (%r); retrying in %.2fs", *_what(request), exc, delay)
                    time.sleep(delay)
                    retries_done += 1
                    continue
                if isinstance(exc, httpx.TimeoutException):
                    raise APITimeoutError(request=request) from exc
                raise APIConnectionError(f"Connection error: {exc}", request=request) from exc
            if response.is_success:
                return response
            if (
                should_retry_status(response.status_code, response.headers)
                and retries_done < max_retries
            ):
                delay = retry_delay(retries_done, parse_retry_after(response.headers))
                log.info(
                    "%s %s -> %d; retrying in %.2fs", *_what(request), response.status_code, delay
                )
                response.close()
                time.sleep(delay)
                retries_done += 1
                continue
            response.read()
            response.close()
            raise make_status_error(response)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(BaseClient[httpx.AsyncClient]):
    """Asynchronous client of the contrail API (same surface as :class:`Client`, awaitable).

    ``AsyncClient()`` reads ``CONTRAIL_API_KEY`` and ``CONTRAIL_BASE_URL`` (default
    ``http://127.0.0.1:8000``) when the arguments are not given. Use it as an async context
    manager or call :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | httpx.URL | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=self.timeout, follow_redirects=True)

    def with_options(
        self, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN, max_retries: int | None = None
    ) -> AsyncClient:
        """A client like this one with another timeout or retry count, for one call or many
        (``client.with_options(timeout=5).jobs.retrieve(id)``), as in openai-python. It shares
        this client's connection pool; closing it leaves the pool open."""
        return AsyncClient(**self._copy_settings(timeout, max_retries))

    @cached_property
    def files(self) -> AsyncFiles:
        return AsyncFiles(self)

    @cached_property
    def jobs(self) -> AsyncJobs:
        return AsyncJobs(self)

    @cached_property
    def models(self) -> AsyncModels:
        return AsyncModels(self)

    # -- I/O ----------------------------------------------------------------------------------

    async def request(self, options: RequestOptions) -> httpx.Response:
        """Send with retries; returns a read response with a 2xx status or raises."""
        response = await self._send(options, stream=False)
        return response

    @contextlib.asynccontextmanager
    async def stream(self, options: RequestOptions) -> AsyncIterator[httpx.Response]:
        """Like :meth:`request`, but the body is left unread for ``aiter_lines``/``aiter_bytes``."""
        response = await self._send(options, stream=True)
        try:
            yield response
        finally:
            await response.aclose()

    async def _send(self, options: RequestOptions, *, stream: bool) -> httpx.Response:
        max_retries = self._max_retries_for(options)
        retries_done = 0
        while True:
            request = self._build_request(options)
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if should_retry_exception(exc) and retries_done < max_retries:
                    delay = retry_delay(retries_done)
                    log.info("%s %s failed (%r); retrying in %.2fs", *_what(request), exc, delay)
                    await asyncio.sleep(delay)
                    retries_done += 1
                    continue
                if isinstance(exc, httpx.TimeoutException):
                    raise APITimeoutError(request=request) from exc
                raise APIConnectionError(f"Connection error: {exc}", request=request) from exc
            if response.is_success:
                return response
            if (
                should_retry_status(response.status_code, response.headers)
                and retries_done < max_retries
            ):
                delay = retry_delay(retries_done, parse_retry_after(response.headers))
                log.info(
                    "%s %s -> %d; retrying in %.2fs", *_what(request), response.status_code, delay
                )
                await response.aclose()
                await asyncio.sleep(delay)
                retries_done += 1
                continue
            await response.aread()
            await response.aclose()
            raise make_status_error(response)

    # -- lifecycle ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _what(request: httpx.Request) -> tuple[str, str]:
    return request.method, request.url.path
