"""Input files: streamed JSONL upload validated line by line, written in shard-sized parts."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from contrail.client.types import Deleted, ErrorDetail, FileObject, Item, ItemError, TaskName
from contrail.core.jobs import protocol
from contrail.core.jobs.record import IDS_PER_OBJECT, FileRecord, new_id
from contrail.core.storage import Storage, file_part_key
from contrail.core.tasks.formats import LineParser
from contrail.service.deps import SettingsDep, StorageDep, StoreDep, TenantDep, rate_limited
from contrail.service.errors import ApiError, error_responses
from contrail.service.metrics import UPLOADED_ITEMS
from contrail.service.settings import ApiSettings

router = APIRouter(prefix="/v1/files", tags=["files"])


class _Upload:
    """Validates lines and writes accepted items in parts (and their ids in id objects, for exact
    job totals); stops writing at the first bad line."""

    def __init__(
        self, file_id: str, task: TaskName, storage: Storage, part_size: int, cap: int
    ) -> None:
        self.file_id = file_id
        self.ids: list[str] = []
        self.id_objects = 0
        self.parser = LineParser(task)
        self.storage = storage
        self.part_size = part_size
        self.cap = cap
        self.buf: list[bytes] = []
        self.parts = 0
        self.items = 0
        self.line_no = 0
        self.errors: list[ItemError] = []
        self.n_errors = 0

    async def line(self, raw: bytes) -> None:
        self.line_no += 1
        result = self.parser.parse(raw, self.line_no)
        if result is None:
            return
        if isinstance(result, ItemError):
            self.n_errors += 1
            if len(self.errors) < self.cap:
                self.errors.append(result)
            self.buf.clear()
            return
        assert isinstance(result, Item)
        self.items += 1
        if self.n_errors:
            return
        self.buf.append(result.model_dump_json(exclude_none=True).encode())
        self.ids.append(result.id)
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


async def _take(up: _Upload, raw: bytes, settings: ApiSettings) -> ApiError | None:
    """Validate one line; an error that rejects the whole upload at once (413), or None."""
    if len(raw) > settings.max_line_bytes:
        return ApiError(
            413, f"line {up.line_no + 1} is longer than {settings.max_line_bytes} bytes"
        )
    await up.line(raw)
    if up.items > settings.max_queued_items:
        return ApiError(
            413,
            f"the file has more than {settings.max_queued_items} items (the per-tenant "
            f"queued-items quota) at line {up.line_no}: split it into smaller files and jobs",
        )
    return None


@router.post(
    "",
    status_code=201,
    operation_id="upload_file",
    dependencies=[Depends(rate_limited)],
    responses=error_responses(400, 401, 413, 422, 429),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/jsonl": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def upload_file(
    request: Request,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    task: Annotated[TaskName, Query(description="Task the items are for.")] = TaskName.GENERIC,
    filename: Annotated[str | None, Query(max_length=256)] = None,
) -> FileObject:
    """Upload a JSONL file of items (any supported task format). The body is streamed and
    validated line by line; any bad line rejects the whole file (422, nothing stored)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise ApiError(413, f"body of {declared} bytes exceeds {settings.max_upload_bytes} bytes")
    file_id = new_id("file")
    up = _Upload(file_id, task, storage, settings.shard_size, settings.max_error_details)
    size = 0
    rest = b""
    reject: ApiError | None = None  # decided early; the rest of the body is drained unread
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_upload_bytes:
                raise ApiError(413, f"body exceeds {settings.max_upload_bytes} bytes")
            if reject is not None:
                continue
            data = rest + chunk if rest else chunk
            lines = data.split(b"\n")
            rest = lines.pop()
            for raw in lines:
                reject = await _take(up, raw, settings)
                if reject is not None:
                    break
            if reject is None and len(rest) > settings.max_line_bytes:
                reject = ApiError(
                    413, f"line {up.line_no + 1} is longer than {settings.max_line_bytes} bytes"
                )
        if reject is None and rest:
            reject = await _take(up, rest, settings)
        if reject is not None:
            raise reject
        if up.n_errors:
            shown = len(up.errors)
            raise ApiError(
                422,
                f"{up.n_errors} invalid line(s) of {up.line_no}; nothing was stored"
                + (f" (first {shown} listed)" if shown < up.n_errors else ""),
                details=[
                    ErrorDetail(line=e.line, field=e.field, code=e.code, message=e.message)
                    for e in up.errors
                ],
            )
        if up.items == 0:
            raise ApiError(
                422,
                "the file holds no items",
                details=[ErrorDetail(code="empty_input", message="no non-blank lines")],
            )
        await up.flush()
        await up.flush_ids()
    except BaseException:
        await up.discard()
        raise
    record = FileRecord(
        id=file_id,
        tenant=tenant,
        filename=filename,
        bytes=size,
        items=up.items,
        task=task,
        format=up.parser.format or "generic",
        created_at=time.time(),
        parts=up.parts,
        part_size=up.part_size,
    )
    await store.save_file(record)
    UPLOADED_ITEMS.inc(up.items)
    return record.to_file()


@router.get("/{file_id}", operation_id="get_file", responses=error_responses(401, 404))
async def get_file(file_id: str, tenant: TenantDep, store: StoreDep) -> FileObject:
    record = await store.file(tenant, file_id)
    if record is None or record.deleting:
        raise ApiError(404, f"no file {file_id!r}")
    return record.to_file()


@router.delete("/{file_id}", operation_id="delete_file", responses=error_responses(401, 404, 409))
async def delete_file(
    file_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep
) -> Deleted:
    """Delete a file and its stored items. A file that a running job reads cannot be deleted
    (409); finished jobs keep their datasets but can no longer be resubmitted."""
    if await store.file(tenant, file_id) is None:
        raise ApiError(404, f"no file {file_id!r}")
    outcome, detail = await store.run(protocol.delete_file(file_id))
    if outcome == "in_use":
        raise ApiError(409, f"file {file_id} is the input of {detail} running job(s)")
    if outcome == "missing":
        raise ApiError(404, f"no file {file_id!r}")
    await storage.delete_prefix_async(f"files/{file_id}/")
    await store.forget_file(file_id)
    return Deleted(id=file_id, object="file.deleted")
