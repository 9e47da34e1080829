"""Every read of a job's stored records and errors for the viewer, in one module.

Where a job's records are (the only storage layout knowledge of the viewer):
- finalized (its manifest exists): the merged `dataset.parquet`, read by row group with column
  projection (`jobs/<id>/errors.jsonl` for errors);
- running: the counted attempt of each shard (`contrail.core.jobs.outputs.counted_keys`, from
  the job's `done` hash in Redis) in shard order, the order finalization merges them in;
  attempts that were never counted (a late or repeated writer's) are never read.

`_shard_keys`, `_final_keys` and `_is_final` are what to change when that layout changes.

Stored objects never change once written (every attempt writes its own keys), so parsed shards
and Parquet columns are cached in memory keyed by (key, ETag, size), within a byte budget; a
running job's page costs one LIST plus fetching the shards counted since the last call.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import obstore
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
from cachetools import LRUCache
from obstore.exceptions import NotFoundError

from contrail.client.types import Manifest
from contrail.core.dataset_schema import ERROR_SCHEMA, RECORD_SCHEMA
from contrail.core.jobs.outputs import counted_keys
from contrail.core.jobs.store import AsyncJobStore
from contrail.core.storage import Storage, dataset_keys
from contrail.service.viewer.query import Filters, Fragment, Page, column_values, select

RECORD_COLUMNS: tuple[str, ...] = tuple(RECORD_SCHEMA.names)
ERROR_COLUMNS: tuple[str, ...] = tuple(ERROR_SCHEMA.names)
_FETCH_CONCURRENCY = 16  # parallel GETs of new shards


# ------------------------------------------------------------------------------------- cache


class _Cache:
    """Thread-safe LRU of Arrow tables within a byte budget, plus row counts of shards (tiny,
    kept apart so paging a running job never needs an evicted shard's records)."""

    def __init__(self, max_bytes: int) -> None:
        self._tables: LRUCache[tuple[Any, ...], pa.Table] = LRUCache(
            maxsize=max(max_bytes, 1), getsizeof=lambda t: max(int(t.nbytes), 1)
        )
        self._rows: LRUCache[tuple[Any, ...], int] = LRUCache(maxsize=1_000_000)
        self._meta: LRUCache[tuple[Any, ...], pq.FileMetaData] = LRUCache(maxsize=256)
        self._lock = threading.Lock()

    def table(self, key: tuple[Any, ...]) -> pa.Table | None:
        with self._lock:
            return self._tables.get(key)

    def put_table(self, key: tuple[Any, ...], table: pa.Table) -> None:
        with self._lock:
            if table.nbytes <= self._tables.maxsize:
                self._tables[key] = table

    def rows(self, key: tuple[Any, ...]) -> int | None:
        with self._lock:
            return self._rows.get(key)

    def put_rows(self, key: tuple[Any, ...], n: int) -> None:
        with self._lock:
            self._rows[key] = n

    def meta(self, key: tuple[Any, ...]) -> pq.FileMetaData | None:
        with self._lock:
            return self._meta.get(key)

    def put_meta(self, key: tuple[Any, ...], md: pq.FileMetaData) -> None:
        with self._lock:
            self._meta[key] = md


@dataclass(frozen=True)
class _Obj:
    """A stored object as listed: its key and what identifies this version of it."""

    key: str
    etag: str
    size: int

    @property
    def id(self) -> tuple[str, str, int]:
        return (self.key, self.etag, self.size)


def _obj(meta: Any) -> _Obj:
    return _Obj(str(meta["path"]), str(meta.get("e_tag") or ""), int(meta["size"]))


# ------------------------------------------------------------------------------ fragments


def _parse_jsonl(data: bytes, schema: pa.Schema) -> pa.Table:
    if not data.strip():
        return schema.empty_table()
    read = pajson.ReadOptions(block_size=max(len(data) + 1, 1 << 16), use_threads=False)
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    table = pajson.read_json(io.BytesIO(data), read_options=read, parse_options=parse)
    return table.select(schema.names).cast(schema)


class _JsonlFragment:
    """One JSONL object (a shard or a merged errors file), parsed whole and cached."""

    def __init__(
        self, storage: Storage, obj: _Obj, schema: pa.Schema, cache: _Cache, rows: int
    ) -> None:
        self.storage = storage
        self.obj = obj
        self.schema = schema
        self.cache = cache
        self._rows = rows

    @property
    def rows(self) -> int:
        return self._rows

    def read(self, columns: Sequence[str]) -> pa.Table:
        table = self.cache.table(self.obj.id)
        if table is None:  # evicted since it was counted: fetch again (runs in a worker thread)
            table = _parse_jsonl(self.storage.get(self.obj.key), self.schema)
            self.cache.put_table(self.obj.id, table)
        return table.select(list(columns))


class _RowGroupFragment:
    """One row group of a Parquet file; columns read on demand and cached one by one."""

    def __init__(self, source: _ParquetSource, index: int) -> None:
        self.source = source
        self.index = index

    @property
    def rows(self) -> int:
        return int(self.source.meta.row_group(self.index).num_rows)

    def read(self, columns: Sequence[str]) -> pa.Table:
        arrays: dict[str, pa.ChunkedArray] = {}
        missing: list[str] = []
        for col in columns:
            cached = self.source.cache.table((*self.source.obj.id, self.index, col))
            if cached is None:
                missing.append(col)
            else:
                arrays[col] = cached.column(0)
        if missing:
            table = self.source.file().read_row_group(self.index, columns=missing)
            for col in missing:
                arrays[col] = table[col]
                self.source.cache.put_table(
                    (*self.source.obj.id, self.index, col), table.select([col])
                )
        return pa.table({c: arrays[c] for c in columns})


class _RangeFile(io.RawIOBase):
    """A stored object as a seekable file whose reads are ranged GETs. (obstore's own reader
    lacks the file attributes pyarrow checks, such as `closed`; this adapter has them all.)"""

    def __init__(self, storage: Storage, obj: _Obj) -> None:
        super().__init__()
        self.store = storage.store
        self.obj = obj
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.obj.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.obj.size - self.pos)
        if n <= 0:
            return 0
        data = obstore.get_range(self.store, self.obj.key, start=self.pos, length=n)
        buffer[:n] = memoryview(data)
        self.pos += n
        return n


class _ParquetSource:
    def __init__(self, storage: Storage, obj: _Obj, cache: _Cache) -> None:
        self.storage = storage
        self.obj = obj
        self.cache = cache
        md = cache.meta(obj.id)
        if md is None:
            md = self.file().metadata
            cache.put_meta(obj.id, md)
        self.meta: pq.FileMetaData = md

    def file(self) -> pq.ParquetFile:
        md = self.cache.meta(self.obj.id)
        if self.storage.root is not None:  # local directory: read the file in place
            return pq.ParquetFile(self.storage.root / self.obj.key, metadata=md)
        # Object store: ranged reads, so a page reads a row group's columns, not the file.
        reader = _RangeFile(self.storage, self.obj)
        return pq.ParquetFile(pa.PythonFile(reader, mode="r"), metadata=md)

    def fragments(self) -> list[Fragment]:
        return [_RowGroupFragment(self, i) for i in range(self.meta.num_row_groups)]


# ------------------------------------------------------------------------ storage layout


def _final_keys(job_id: str) -> dict[str, str]:
    return dataset_keys(job_id)


def _shard_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/shards/"


async def _head(storage: Storage, key: str) -> _Obj | None:
    try:
        meta = await obstore.head_async(storage.store, key)
    except (NotFoundError, FileNotFoundError):
        return None
    return _obj(meta)


async def _list(storage: Storage, prefix: str) -> list[_Obj]:
    objs: list[_Obj] = []
    async for batch in obstore.list(storage.store, prefix=prefix):
        objs.extend(_obj(meta) for meta in batch)
    return sorted(objs, key=lambda o: o.key)


async def _is_final(storage: Storage, job_id: str) -> bool:
    """The merged files are complete once the manifest exists (finalization writes it last)."""
    return await _head(storage, _final_keys(job_id)["manifest"]) is not None


async def _shard_keys(
    storage: Storage, store: AsyncJobStore, job_id: str, errors: bool
) -> list[_Obj]:
    wanted = set(counted_keys(job_id, await store.counted(job_id), errors=errors))
    objs = await _list(storage, _shard_prefix(job_id))
    return [o for o in objs if o.key in wanted]


# -------------------------------------------------------------------------------- reader


class JobData:
    """The viewer's reads of job outputs from one `Storage`, with a shared in-memory cache."""

    def __init__(
        self, storage: Storage, store: AsyncJobStore, cache_bytes: int = 256 << 20
    ) -> None:
        self.storage = storage
        self.store = store
        self.cache = _Cache(cache_bytes)

    async def _jsonl_fragments(self, objs: Sequence[_Obj], schema: pa.Schema) -> list[Fragment]:
        """Fragments of JSONL objects, fetching and parsing those not seen before."""
        new = [o for o in objs if self.cache.rows(o.id) is None]
        sem = asyncio.Semaphore(_FETCH_CONCURRENCY)

        async def fetch(o: _Obj) -> bytes:
            async with sem:
                result = await obstore.get_async(self.storage.store, o.key)
                return bytes(await result.bytes_async())

        blobs = await asyncio.gather(*(fetch(o) for o in new))

        def parse() -> None:
            for o, data in zip(new, blobs, strict=True):
                table = _parse_jsonl(data, schema)
                self.cache.put_table(o.id, table)
                self.cache.put_rows(o.id, table.num_rows)

        if new:
            await asyncio.to_thread(parse)
        return [
            _JsonlFragment(self.storage, o, schema, self.cache, self.cache.rows(o.id) or 0)
            for o in objs
        ]

    async def _record_fragments(self, job_id: str) -> tuple[str, list[Fragment]]:
        if await _is_final(self.storage, job_id):
            obj = await _head(self.storage, _final_keys(job_id)["parquet"])
            if obj is not None:
                src = await asyncio.to_thread(_ParquetSource, self.storage, obj, self.cache)
                return "dataset", src.fragments()
        objs = await _shard_keys(self.storage, self.store, job_id, errors=False)
        return "shards", await self._jsonl_fragments(objs, RECORD_SCHEMA)

    async def _error_fragments(self, job_id: str) -> tuple[str, list[Fragment]]:
        if await _is_final(self.storage, job_id):
            obj = await _head(self.storage, _final_keys(job_id)["errors"])
            objs = [obj] if obj is not None else []
            return "dataset", await self._jsonl_fragments(objs, ERROR_SCHEMA)
        objs = await _shard_keys(self.storage, self.store, job_id, errors=True)
        return "shards", await self._jsonl_fragments(objs, ERROR_SCHEMA)

    # ---- what the viewer asks for

    async def records_page(
        self, job_id: str, filters: Filters, offset: int, limit: int | None
    ) -> tuple[str, Page]:
        """(source, page) of the job's records matching `filters`, in dataset order."""
        source, frags = await self._record_fragments(job_id)
        page = await asyncio.to_thread(select, frags, filters, offset, limit, RECORD_COLUMNS)
        return source, page

    async def errors_page(
        self, job_id: str, filters: Filters, offset: int, limit: int | None
    ) -> tuple[str, Page]:
        source, frags = await self._error_fragments(job_id)
        page = await asyncio.to_thread(select, frags, filters, offset, limit, ERROR_COLUMNS)
        return source, page

    async def item_ids(self, job_id: str) -> list[str]:
        """Every record's item id, in dataset order."""
        _, frags = await self._record_fragments(job_id)
        return await asyncio.to_thread(column_values, frags, "item_id")

    async def manifest(self, job_id: str) -> Manifest | None:
        try:
            result = await obstore.get_async(self.storage.store, _final_keys(job_id)["manifest"])
        except (NotFoundError, FileNotFoundError):
            return None
        return Manifest.model_validate(json.loads(bytes(await result.bytes_async())))

    async def parquet(self, job_id: str) -> AsyncIterator[bytes] | None:
        """The merged Parquet file's bytes, streamed; None before finalization."""
        key = _final_keys(job_id)["parquet"]
        if not await _is_final(self.storage, job_id) or await _head(self.storage, key) is None:
            return None
        return self.storage.stream_async(key)
