"""Object storage (obstore): a local directory by default, any S3-compatible store by URL.

Layout under the store's root (S3 prefix or local directory)::

    files/<file_id>/part-000000.jsonl      validated input items (one `Item` per line), shard-sized
    files/<file_id>/ids.txt                the file's item ids in order (exact job totals)
    jobs/<job_id>/input/part-000000.jsonl  inline items of a job, shard-sized
    jobs/<job_id>/shards/000000/<attempt>.jsonl         RationaleRecords of one attempt at a shard
    jobs/<job_id>/shards/000000/<attempt>.errors.jsonl  ItemErrors of that attempt
    jobs/<job_id>/dataset.jsonl | dataset.parquet | errors.jsonl | manifest.json

Shard outputs are written once per attempt, under the attempt's own key: Redis records which
attempt of each shard was counted, and only that one is ever merged, so a late or repeated
writer can never change what a dataset holds.

Errors: obstore reports a broken connection, an S3 5xx or a full local disk as a GenericError
(and OSError for some local failures). The synchronous methods used by workers retry those with
exponential backoff for up to `retry_for_s` seconds before raising `StorageUnavailable`; a
missing object (`NotFoundError`) or a permission error is never retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlparse

import obstore
from obstore.exceptions import GenericError, NotFoundError
from obstore.store import LocalStore, S3Store, from_url

log = logging.getLogger("contrail.storage")
T = TypeVar("T")

# Errors worth retrying: the store is unreachable, failing (5xx) or out of space.
TRANSIENT: tuple[type[BaseException], ...] = (GenericError, ConnectionError, TimeoutError)


class StorageUnavailable(Exception):
    """Storage kept failing for longer than the retry budget."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError | NotFoundError | PermissionError):
        return False
    return isinstance(exc, (TRANSIENT, OSError))


def file_part_key(file_id: str, part: int) -> str:
    return f"files/{file_id}/part-{part:06d}.jsonl"


def job_input_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/input/part-"


def job_input_key(job_id: str, part: int) -> str:
    return f"{job_input_prefix(job_id)}{part:06d}.jsonl"


def shard_prefix(job_id: str, shard: int) -> str:
    return f"jobs/{job_id}/shards/{shard:06d}/"


def shard_output_keys(job_id: str, shard: int, attempt: str) -> tuple[str, str]:
    """(records key, errors key) of one attempt at a shard."""
    base = f"{shard_prefix(job_id, shard)}{attempt}"
    return f"{base}.jsonl", f"{base}.errors.jsonl"


def dataset_keys(job_id: str) -> dict[str, str]:
    base = f"jobs/{job_id}"
    return {
        "dataset": f"{base}/dataset.jsonl",
        "parquet": f"{base}/dataset.parquet",
        "errors": f"{base}/errors.jsonl",
        "manifest": f"{base}/manifest.json",
    }


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        data = rest + bytes(chunk)
        *lines, rest = data.split(b"\n")
        yield from lines
    if rest:
        yield rest


class Storage:
    """One obstore store with the few operations contrail needs (sync for workers, async for
    the API)."""

    def __init__(
        self,
        url: str,
        *,
        retry_for_s: float = 0.0,
        request_timeout_s: int = 0,
        public_url: str | None = None,
    ) -> None:
        self.url = url
        self.retry_for_s = retry_for_s
        parsed = urlparse(url)
        self.scheme = parsed.scheme
        self.store: Any
        if parsed.scheme == "file":
            root = Path(parsed.path)
            root.mkdir(parents=True, exist_ok=True)
            self.root: Path | None = root
            self.store = LocalStore(root)
        else:
            self.root = None
            # obstore retries S3 requests itself (3 minutes by default); bounding that lets the
            # API answer 503 quickly and the workers' own retry loop stay in charge.
            options: dict[str, Any] = {}
            if request_timeout_s:
                options["retry_config"] = {
                    "max_retries": 3,
                    "retry_timeout": timedelta(seconds=request_timeout_s),
                }
            self.store = from_url(url, **options)
        # Presigned links are signed for the address clients use: the signature covers the
        # host, so a link to the in-network endpoint cannot be rewritten afterwards.
        self.signer: Any = self.store
        if public_url and parsed.scheme == "s3":
            self.signer = from_url(url, endpoint=public_url.rstrip("/"))

    # ---- retries (sync)
    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.5
        while True:
            try:
                return fn()
            except BaseException as exc:
                if not is_transient(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise StorageUnavailable(f"{what}: {exc}".splitlines()[0]) from exc
                log.warning("storage %s failed (%s); retrying in %.1f s", what, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    # ---- sync (workers)
    def put(self, key: str, data: bytes | Path) -> None:
        """Write a whole object (from bytes or a local file); retried as a whole."""

        def once() -> None:
            if isinstance(data, Path):
                with data.open("rb") as fh:
                    obstore.put(self.store, key, fh)
            else:
                obstore.put(self.store, key, data)

        self._retrying(f"put {key}", once)

    def get(self, key: str) -> bytes:
        return self._retrying(f"get {key}", lambda: bytes(obstore.get(self.store, key).bytes()))

    def get_or_none(self, key: str) -> bytes | None:
        try:
            return self.get(key)
        except (NotFoundError, FileNotFoundError):
            return None

    def read_lines(self, key: str) -> list[bytes]:
        """The non-blank lines of an object (read whole, so a retry never repeats lines)."""
        return [line for line in _lines([self.get(key)]) if line.strip()]

    def iter_lines(self, key: str) -> Iterator[bytes]:
        """The lines of an object, streamed (no retry: for large objects read once)."""
        yield from _lines(bytes(c) for c in obstore.get(self.store, key).stream())

    def writer(self, key: str) -> IO[bytes]:
        """A streaming writer (multipart upload on S3); the object appears when closed."""
        writer: IO[bytes] = obstore.open_writer(self.store, key)  # type: ignore[assignment]
        return writer

    def list_keys(self, prefix: str) -> list[str]:
        def once() -> list[str]:
            found: list[str] = []
            for batch in obstore.list(self.store, prefix=prefix):
                found.extend(str(meta["path"]) for meta in batch)
            return sorted(found)

        return self._retrying(f"list {prefix}", once)

    def delete(self, keys: list[str]) -> None:
        if keys:
            self._retrying("delete", lambda: obstore.delete(self.store, keys))

    def delete_prefix(self, prefix: str) -> None:
        self.delete(self.list_keys(prefix))

    def exists(self, key: str) -> bool:
        def once() -> bool:
            try:
                obstore.head(self.store, key)
            except (NotFoundError, FileNotFoundError):
                return False
            return True

        return self._retrying(f"head {key}", once)

    # ---- async (API)
    async def put_async(self, key: str, data: bytes) -> None:
        await obstore.put_async(self.store, key, data)

    async def get_async(self, key: str) -> bytes:
        result = await obstore.get_async(self.store, key)
        return bytes(await result.bytes_async())

    async def exists_async(self, key: str) -> bool:
        try:
            await obstore.head_async(self.store, key)
        except (NotFoundError, FileNotFoundError):
            return False
        return True

    async def list_async(self, prefix: str) -> list[str]:
        found: list[str] = []
        async for batch in obstore.list(self.store, prefix=prefix):
            found.extend(str(meta["path"]) for meta in batch)
        return sorted(found)

    async def delete_prefix_async(self, prefix: str) -> None:
        found = await self.list_async(prefix)
        for start in range(0, len(found), 1000):
            await obstore.delete_async(self.store, found[start : start + 1000])

    async def stream_async(self, key: str) -> AsyncIterator[bytes]:
        result = await obstore.get_async(self.store, key)
        async for chunk in result.stream():
            yield bytes(chunk)

    async def lines_async(self, key: str) -> AsyncIterator[bytes]:
        """The non-blank lines of an object, streamed."""
        rest = b""
        async for chunk in self.stream_async(key):
            data = rest + chunk
            *lines, rest = data.split(b"\n")
            for line in lines:
                if line.strip():
                    yield line
        if rest.strip():
            yield rest

    async def ping_async(self) -> None:
        await asyncio.wait_for(self.exists_async("_ping"), timeout=5)

    async def urls_async(self, keys: list[str], expires_s: int) -> list[str]:
        """Presigned GET URLs on S3; file:// URLs for a local directory."""
        if isinstance(self.signer, S3Store):
            signed = await obstore.sign_async(
                self.signer, "GET", keys, timedelta(seconds=expires_s)
            )
            return [str(u) for u in signed]
        if self.root is not None:
            return [(self.root / k).as_uri() for k in keys]
        return [f"{self.url.rstrip('/')}/{k}" for k in keys]
