"""Input files: upload (the work is in `contrail.service.uploads`), retrieve and delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from contrail.client.types import Deleted, FileObject, TaskName
from contrail.core.jobs import protocol
from contrail.service import uploads
from contrail.service.deps import SettingsDep, StorageDep, StoreDep, TenantDep, rate_limited
from contrail.service.errors import ApiError, error_responses
from contrail.service.upload_slots import UploadSlots

router = APIRouter(prefix="/v1/files", tags=["files"])


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
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in (
                    "application/jsonl",
                    "application/json",
                    "application/gzip",
                    "application/vnd.apache.parquet",
                    "application/octet-stream",
                )
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
    filename: Annotated[
        str | None,
        Query(
            max_length=256,
            # Display metadata only (FileObject.filename): never part of a storage key, a path
            # or a header. Control characters are refused so that no log line or terminal
            # showing it can be steered.
            pattern=r"^[^\x00-\x1f\x7f]*$",
            description="The file's name as the client knows it (display only).",
        ),
    ] = None,
) -> FileObject:
    """Upload an input file: JSON lines, one JSON array, or Parquet, each optionally gzip-
    compressed (detected from the content; a '.parquet' or '.gz' name must match it), holding
    records of any supported task format. The body is streamed and validated record by record;
    any bad record rejects the whole file (422 naming its line, or its record index for arrays
    and Parquet; nothing stored)."""
    slots: UploadSlots = request.app.state.upload_slots
    with slots.hold(tenant):
        record = await uploads.receive(
            request.stream(), tenant, settings, store, storage, task, filename
        )
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
