"""Object storage (obstore): a local directory by default, any S3-compatible store by URL.

Layout under the store's root (S3 prefix or local directory)::

    files/<file_id>/part-000000.jsonl      validated input items (one `Item` per line), shard-sized
    jobs/<job_id>/input/part-000000.jsonl  inline items of a job, shard-sized
    jobs/<job_id>/shards/000000.jsonl      RationaleRecords of one shard (same key on redelivery)
    jobs/<job_id>/shards/000000.errors.jsonl   ItemErrors of one shard
    jobs/<job_id>/dataset.jsonl | dataset.parquet | errors.jsonl | manifest.json
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import LocalStore, S3Store, from_url


def file_part_key(file_id: str, part: int) -> str:
    return f"files/{file_id}/part-{part:06d}.jsonl"


def job_input_key(job_id: str, part: int) -> str:
    return f"jobs/{job_id}/input/part-{part:06d}.jsonl"


def shard_key(job_id: str, shard: int) -> str:
    return f"jobs/{job_id}/shards/{shard:06d}.jsonl"


def shard_errors_key(job_id: str, shard: int) -> str:
    return f"jobs/{job_id}/shards/{shard:06d}.errors.jsonl"


def dataset_keys(job_id: str) -> dict[str, str]:
    base = f"jobs/{job_id}"
    return {
        "dataset": f"{base}/dataset.jsonl",
        "parquet": f"{base}/dataset.parquet",
        "errors": f"{base}/errors.jsonl",
        "manifest": f"{base}/manifest.json",
    }


class Storage:
    """Thin wrapper over one obstore store with the few operations contrail needs."""

    def __init__(self, url: str) -> None:
        self.url = url
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
            self.store = from_url(url)

    # ---- sync (workers)
    def put(self, key: str, data: bytes | Iterable[bytes] | Path) -> None:
        if isinstance(data, Path):
            with data.open("rb") as fh:
                obstore.put(self.store, key, fh)
            return
        obstore.put(self.store, key, data if isinstance(data, bytes) else iter(data))

    def get(self, key: str) -> bytes:
        return bytes(obstore.get(self.store, key).bytes())

    def get_or_none(self, key: str) -> bytes | None:
        try:
            return self.get(key)
        except (NotFoundError, FileNotFoundError):
            return None

    def iter_lines(self, key: str) -> Iterator[bytes]:
        """The lines of an object (without newlines), streamed."""
        rest = b""
        for chunk in obstore.get(self.store, key).stream():
            data = rest + bytes(chunk)
            *lines, rest = data.split(b"\n")
            yield from lines
        if rest:
            yield rest

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for batch in obstore.list(self.store, prefix=prefix):
            keys.extend(str(meta["path"]) for meta in batch)
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list_keys(prefix)
        if keys:
            obstore.delete(self.store, keys)

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self.store, key)
        except (NotFoundError, FileNotFoundError):
            return False
        return True

    # ---- async (API)
    async def put_async(self, key: str, data: bytes) -> None:
        await obstore.put_async(self.store, key, data)

    async def exists_async(self, key: str) -> bool:
        try:
            await obstore.head_async(self.store, key)
        except (NotFoundError, FileNotFoundError):
            return False
        return True

    async def list_async(self, prefix: str) -> list[str]:
        keys: list[str] = []
        async for batch in obstore.list(self.store, prefix=prefix):
            keys.extend(str(meta["path"]) for meta in batch)
        return sorted(keys)

    async def delete_prefix_async(self, prefix: str) -> None:
        keys = await self.list_async(prefix)
        if keys:
            await obstore.delete_async(self.store, keys)

    async def stream_async(self, key: str) -> AsyncIterator[bytes]:
        result = await obstore.get_async(self.store, key)
        async for chunk in result.stream():
            yield bytes(chunk)

    async def ping_async(self) -> None:
        await asyncio.wait_for(self.exists_async("_ping"), timeout=5)

    async def urls_async(self, keys: list[str], expires_s: int) -> list[str]:
        """Presigned GET URLs on S3; file:// URLs for a local directory."""
        if isinstance(self.store, S3Store):
            signed = await obstore.sign_async(self.store, "GET", keys, timedelta(seconds=expires_s))
            return [str(u) for u in signed]
        if self.root is not None:
            return [(self.root / k).as_uri() for k in keys]
        return [f"{self.url.rstrip('/')}/{k}" for k in keys]
