"""Receiving an input file: a streamed upload (JSON lines, a JSON array or Parquet, optionally
gzip) validated record by record off the event loop, and written in shard-sized parts (with the
items' ids, for exact job totals). Nothing is stored unless every record is valid."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

from starlette.concurrency import run_in_threadpool

from contrail.client.types import ErrorDetail, TaskName
from contrail.core.jobs.record import IDS_PER_OBJECT, FileRecord, new_id
from contrail.core.jobs.store import AsyncJobStore
from contrail.core.storage import Storage, file_part_key
from contrail.service.errors import ApiError
from contrail.service.ingest import Batch, IngestParser, UploadRejected
from contrail.service.metrics import UPLOADED_ITEMS
from contrail.service.settings import ApiSettings

# Body bytes handed to the parser per thread hop.
FEED_BYTES = 1 << 20


class UploadParts:
    """Accepted items written in parts (and their ids in id objects, for exact job totals);
    nothing more is written after the first error, and everything goes on discard."""

    def __init__(self, file_id: str, storage: Storage, part_size: int, cap: int) -> None:
        self.file_id = file_id
        self.storage = storage
        self.part_size = part_size
        self.cap = cap
        self.buf: list[bytes] = []
        self.ids: list[str] = []
        self.parts = 0
        self.id_objects = 0
        self.items = 0
        self.records = 0  # items and rejected records
        self.errors: list[ErrorDetail] = []
        self.n_errors = 0

    async def take(self, batch: Batch) -> None:
        self.items += len(batch.items)
        self.records += len(batch.items) + len(batch.errors)
        if batch.errors:
            self.n_errors += len(batch.errors)
            self.errors.extend(batch.errors[: max(0, self.cap - len(self.errors))])
            self.buf.clear()
            self.ids.clear()
        if self.n_errors:
            return
        for accepted in batch.items:
            self.buf.append(accepted.line)
            self.ids.append(accepted.id)
            if len(self.buf) >= self.part_size:
                await self.flush()
            if len(self.ids) >= IDS_PER_OBJECT:
                await self.flush_ids()

    async def flush(self) -> None:
        if self.buf and not self.n_errors:
            data = b"\n".join(self.buf) + b"\n"
            await self.storage.put_async(file_part_key(self.file_id, self.parts), data)
            self.parts += 1
        self.buf.clear()

    async def flush_ids(self) -> None:
        if self.ids and not self.n_errors:
            key = f"files/{self.file_id}/ids/{self.id_objects:06d}.txt"
            await self.storage.put_async(key, ("\n".join(self.ids) + "\n").encode())
            self.id_objects += 1
        self.ids.clear()

    async def discard(self) -> None:
        await self.storage.delete_prefix_async(f"files/{self.file_id}/")


class UploadIngest:
    """Drives an IngestParser from the event loop: each step runs in a worker thread."""

    def __init__(self, parser: IngestParser, parts: UploadParts, settings: ApiSettings) -> None:
        self.parser = parser
        self.parts = parts
        self.settings = settings
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    async def add(self, chunk: bytes) -> None:
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)
        if self.pending_bytes >= FEED_BYTES:
            await self._feed()

    async def finish(self) -> None:
        await self._feed()
        await self._drain(self.parser.finish())

    async def _feed(self) -> None:
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            self.pending_bytes = 0
            await self._drain(self.parser.feed(data))

    async def _drain(self, batches: Iterator[Batch]) -> None:
        while (batch := await run_in_threadpool(next, batches, None)) is not None:
            await self.parts.take(batch)
            self._check_budget()
            quota = self.settings.max_queued_items
            if self.parts.items > quota:
                raise ApiError(
                    413,
                    f"the file has more than {quota} items (the per-tenant queued-items quota) "
                    f"by record {self.parts.records}: split it into smaller files and jobs",
                )

    def _check_budget(self) -> None:
        """Stop at the error budget: 422 now, the rest of the body drained unread."""
        budget = self.parser.budget
        if budget.stopped_at is None:
            return
        unit = "line" if self.parser.container == "jsonl" else "record"
        raise ApiError(
            422,
            f"validation stopped at {unit} {budget.stopped_at} after {budget.spent} invalid "
            f"{unit}s (the limit); the rest of the file was not read and nothing was stored "
            f"(first {len(self.parts.errors)} listed)",
            details=self.parts.errors,
        )


def _rejected(exc: UploadRejected) -> ApiError:
    detail = ErrorDetail(code=exc.code, message=exc.message)
    return ApiError(exc.status, exc.message, details=[detail])


async def receive(
    body: AsyncIterator[bytes],
    tenant: str,
    settings: ApiSettings,
    store: AsyncJobStore,
    storage: Storage,
    task: TaskName,
    filename: str | None,
) -> FileRecord:
    """Validate a streamed upload record by record and store it in shard-sized parts, or store
    nothing: any bad record rejects the whole file (422 naming it). The body is read to its end
    even after an early rejection, so that the client gets the answer rather than a reset."""
    file_id = new_id("file")
    parts = UploadParts(file_id, storage, settings.shard_size, settings.max_error_details)
    parser = IngestParser(
        task,
        filename=filename,
        max_line_bytes=settings.max_line_bytes,
        max_decompressed_bytes=settings.max_decompressed_bytes,
        max_errors=settings.max_upload_errors,
        scratch_dir=settings.upload_scratch_dir,
    )
    ingest = UploadIngest(parser, parts, settings)
    size = 0
    reject: ApiError | None = None  # decided early; the rest of the body is drained unread
    try:
        async for chunk in body:
            size += len(chunk)
            if size > settings.max_upload_bytes:  # no Content-Length: counted here too
                raise ApiError(413, f"body exceeds {settings.max_upload_bytes} bytes")
            if reject is None:
                try:
                    await ingest.add(chunk)
                except UploadRejected as exc:
                    reject = _rejected(exc)
                except ApiError as exc:
                    reject = exc
        if reject is None:
            try:
                await ingest.finish()
            except UploadRejected as exc:
                reject = _rejected(exc)
        if reject is not None:
            raise reject
        _check_records(parts, "line" if parser.container == "jsonl" else "record")
        await parts.flush()
        await parts.flush_ids()
    except BaseException:
        await parts.discard()
        raise
    finally:
        await run_in_threadpool(parser.close)
    record = FileRecord(
        id=file_id,
        tenant=tenant,
        filename=filename,
        bytes=size,
        items=parts.items,
        task=task,
        format=parser.format,
        container=parser.container or "jsonl",
        compression=parser.compression,
        created_at=time.time(),
        parts=parts.parts,
        part_size=parts.part_size,
    )
    await store.save_file(record)
    UPLOADED_ITEMS.inc(parts.items)
    return record


def _check_records(parts: UploadParts, unit: str) -> None:
    if parts.n_errors:
        shown = len(parts.errors)
        raise ApiError(
            422,
            f"{parts.n_errors} invalid {unit}(s) of {parts.records}; nothing was stored"
            + (f" (first {shown} listed)" if shown < parts.n_errors else ""),
            details=parts.errors,
        )
    if parts.items == 0:
        raise ApiError(
            422,
            "the file holds no items",
            details=[ErrorDetail(code="empty_input", message="no records")],
        )
