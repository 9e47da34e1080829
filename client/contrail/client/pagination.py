"""Cursor pages: one page of ``data``; iterating a page walks every page after it.

The API pages newest-first with ``?limit=N&after=<last id of the previous page>``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["AsyncCursorPage", "AsyncPaginator", "SyncCursorPage"]


class SyncCursorPage(Generic[T]):
    """One page. ``for item in page`` yields its items and then those of every later page."""

    data: list[T]
    has_more: bool
    last_id: str | None

    def __init__(
        self,
        *,
        data: list[T],
        has_more: bool,
        last_id: str | None,
        fetch: Callable[[str], SyncCursorPage[T]],
    ) -> None:
        self.data = data
        self.has_more = has_more
        self.last_id = last_id
        self._fetch = fetch

    def has_next_page(self) -> bool:
        return self.has_more and bool(self.data) and self.last_id is not None

    def next_page(self) -> SyncCursorPage[T]:
        if not self.has_next_page() or self.last_id is None:
            raise StopIteration("no more pages")
        return self._fetch(self.last_id)

    def iter_pages(self) -> Iterator[SyncCursorPage[T]]:
        page = self
        while True:
            yield page
            if not page.has_next_page():
                return
            page = page.next_page()

    def __iter__(self) -> Iterator[T]:
        for page in self.iter_pages():
            yield from page.data

    def __repr__(self) -> str:
        return f"SyncCursorPage(len(data)={len(self.data)}, has_more={self.has_more})"


class AsyncCursorPage(Generic[T]):
    """One page. ``async for item in page`` yields its items and those of every later page."""

    data: list[T]
    has_more: bool
    last_id: str | None

    def __init__(
        self,
        *,
        data: list[T],
        has_more: bool,
        last_id: str | None,
        fetch: Callable[[str], Awaitable[AsyncCursorPage[T]]],
    ) -> None:
        self.data = data
        self.has_more = has_more
        self.last_id = last_id
        self._fetch = fetch

    def has_next_page(self) -> bool:
        return self.has_more and bool(self.data) and self.last_id is not None

    async def next_page(self) -> AsyncCursorPage[T]:
        if not self.has_next_page() or self.last_id is None:
            raise StopAsyncIteration("no more pages")
        return await self._fetch(self.last_id)

    async def iter_pages(self) -> AsyncIterator[AsyncCursorPage[T]]:
        page = self
        while True:
            yield page
            if not page.has_next_page():
                return
            page = await page.next_page()

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.iter_pages():
            for item in page.data:
                yield item

    def __repr__(self) -> str:
        return f"AsyncCursorPage(len(data)={len(self.data)}, has_more={self.has_more})"


class AsyncPaginator(Generic[T]):
    """What ``AsyncClient.jobs.list()`` returns: ``await`` it for the first page, or
    ``async for`` over it to walk every item of every page."""

    def __init__(self, first: Callable[[], Awaitable[AsyncCursorPage[T]]]) -> None:
        self._first = first

    def __await__(self) -> Generator[Any, None, AsyncCursorPage[T]]:
        return self._first().__await__()

    async def __aiter__(self) -> AsyncIterator[T]:
        page = await self._first()
        async for item in page:
            yield item
