"""Jobs: create (from a file or inline items), retrieve, list, cancel, delete, resubmit, and read
results, errors and dataset locations."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import StreamingResponse

from contrail.client.types import (
    DatasetLocation,
    Deleted,
    Job,
    JobCreate,
    JobList,
)
from contrail.core.jobs import protocol, states
from contrail.core.jobs.record import JobRecord
from contrail.core.jobs.store import AsyncJobStore
from contrail.service import creation, outputs
from contrail.service.deps import SettingsDep, StorageDep, StoreDep, TenantDep, rate_limited
from contrail.service.errors import ApiError, error_responses
from contrail.service.resubmit import resubmit

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JSONL = "application/jsonl"
_stream_responses = {
    200: {"content": {JSONL: {"schema": {"type": "string"}}}, "description": "JSONL stream"},
    **error_responses(401, 404),
}


async def _job_or_404(store: AsyncJobStore, tenant: str, job_id: str) -> JobRecord:
    record = await store.job(tenant, job_id)
    if record is None:
        raise ApiError(404, f"no job {job_id!r}")
    return record


@router.post(
    "",
    status_code=201,
    operation_id="create_job",
    dependencies=[Depends(rate_limited)],
    responses=error_responses(400, 401, 404, 409, 413, 422, 429),
)
async def create_job(
    body: JobCreate,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=256)
    ] = None,
) -> Job:
    """Create a job: its record and all its shards are queued in one atomic step. The same
    `Idempotency-Key` with the same body returns the same job; with another body, 409."""
    record = await creation.create_job(body, tenant, settings, store, storage, idempotency_key)
    return record.to_job()


@router.get("", operation_id="list_jobs", responses=error_responses(400, 401))
async def list_jobs(
    tenant: TenantDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=128)] = None,
) -> JobList:
    """The tenant's jobs, newest first; pass the previous page's `last_id` as `after`."""
    try:
        records, has_more = await store.list_jobs(tenant, limit, after)
    except KeyError:
        raise ApiError(400, f"unknown cursor {after!r}") from None
    jobs = [r.to_job() for r in records]
    return JobList(
        data=jobs,
        has_more=has_more,
        first_id=jobs[0].id if jobs else None,
        last_id=jobs[-1].id if jobs else None,
    )


@router.get("/{job_id}", operation_id="get_job", responses=error_responses(401, 404))
async def get_job(job_id: str, tenant: TenantDep, store: StoreDep) -> Job:
    return (await _job_or_404(store, tenant, job_id)).to_job()


@router.post(
    "/{job_id}/cancel",
    operation_id="cancel_job",
    dependencies=[Depends(rate_limited)],
    responses=error_responses(400, 401, 404, 429),
)
async def cancel_job(job_id: str, tenant: TenantDep, store: StoreDep) -> Job:
    """Cancel: status `cancelling` at once (the finished shards are fixed), `cancelled` when its
    dataset is merged. Finished rationales stay downloadable. A job already finishing or
    finished is left as it is."""
    record = await _job_or_404(store, tenant, job_id)
    await store.run(protocol.cancel(job_id, record.model, time.time()))
    return (await _job_or_404(store, tenant, job_id)).to_job()


@router.delete("/{job_id}", operation_id="delete_job", responses=error_responses(401, 404, 409))
async def delete_job(
    job_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep
) -> Deleted:
    """Delete a finished job: its dataset, shard outputs and inline input are removed from
    storage, then its records. A job still running must be cancelled first (409)."""
    record = await _job_or_404(store, tenant, job_id)
    if record.status not in states.TERMINAL:
        raise ApiError(409, f"job {job_id} is {record.status.value}: cancel it first")
    await storage.delete_prefix_async(f"jobs/{job_id}/")
    outcome, _ = await store.run(protocol.delete_job(job_id, tenant))
    if outcome == "not_terminal":  # cannot happen: terminal is final; keep the record then
        raise ApiError(409, f"job {job_id} is not finished")
    return Deleted(id=job_id, object="job.deleted")


@router.post(
    "/{job_id}/resubmit",
    status_code=201,
    operation_id="resubmit_job",
    dependencies=[Depends(rate_limited)],
    responses=error_responses(401, 404, 409, 422, 429),
)
async def resubmit_job(
    job_id: str, tenant: TenantDep, settings: SettingsDep, store: StoreDep, storage: StorageDep
) -> Job:
    """A new job, with the same settings, over the items of a finished job that still lack a
    rationale: those with a failed rationale, and (for a cancelled, expired or failed job)
    those never decoded. Its metadata names the original job (`resubmitted_from`)."""
    old = await _job_or_404(store, tenant, job_id)
    return (await resubmit(store, storage, settings, old)).to_job()


@router.get(
    "/{job_id}/results",
    operation_id="get_job_results",
    response_class=StreamingResponse,
    responses=_stream_responses,
)
async def job_results(
    job_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep
) -> StreamingResponse:
    """RationaleRecords as JSONL: what is finished so far, all of them once completed."""
    record = await _job_or_404(store, tenant, job_id)
    return StreamingResponse(outputs.stream(store, storage, record, errors=False), media_type=JSONL)


@router.get(
    "/{job_id}/errors",
    operation_id="get_job_errors",
    response_class=StreamingResponse,
    responses=_stream_responses,
)
async def job_errors(
    job_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep
) -> StreamingResponse:
    """ItemErrors as JSONL (rationales that could not be produced)."""
    record = await _job_or_404(store, tenant, job_id)
    return StreamingResponse(outputs.stream(store, storage, record, errors=True), media_type=JSONL)


@router.get(
    "/{job_id}/dataset", operation_id="get_job_dataset", responses=error_responses(401, 404)
)
async def job_dataset(
    job_id: str, tenant: TenantDep, settings: SettingsDep, store: StoreDep, storage: StorageDep
) -> DatasetLocation:
    """Presigned URLs (S3) or file:// URLs (local storage) of the dataset files; null while the
    job is not finished."""
    record = await _job_or_404(store, tenant, job_id)
    return await outputs.dataset_location(storage, record, settings.url_expiry_s)
