"""Jobs: create (from a file or inline items), retrieve, list, cancel, results, errors, dataset."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import StreamingResponse

from contrail.client.types import (
    DatasetLocation,
    Demonstration,
    ErrorDetail,
    Item,
    Job,
    JobCreate,
    JobList,
    JobStatus,
)
from contrail.core.storage import Storage, dataset_keys, file_part_key, job_input_key
from contrail.core.tasks.demos import BUILTIN_POOL_TASKS
from contrail.core.tasks.perturb import is_counterfactual
from contrail.service.deps import (
    RedisDep,
    SettingsDep,
    StorageDep,
    StoreDep,
    TenantDep,
    rate_limited,
)
from contrail.service.errors import ApiError, error_responses
from contrail.service.jobs_store import (
    NON_TERMINAL,
    IdempotencyConflict,
    QuotaExceeded,
    body_hash,
    job_from_hash,
    new_id,
    now,
)
from contrail.service.metrics import JOBS_CREATED
from contrail.service.queue import enqueue_shards

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JSONL = "application/jsonl"
_stream_responses = {
    200: {"content": {JSONL: {"schema": {"type": "string"}}}, "description": "JSONL stream"},
    **error_responses(401, 404),
}


async def _job_or_404(store: StoreDep, tenant: str, job_id: str) -> dict[str, str]:
    h = await store.job_hash(tenant, job_id)
    if h is None:
        raise ApiError(404, f"no job {job_id!r}")
    return h


def _expected_total(n_items: int, fraction: float) -> int:
    return n_items + round(n_items * fraction)


async def _items_demos(storage: Storage, first_part: str) -> list[Demonstration]:
    """Demonstrations for a job without its own or a built-in pool: the first rationales of the
    job's first part, fixed at creation so every shard is prompted alike."""
    demos: list[Demonstration] = []
    async for line in _lines(storage, first_part):
        item = Item.model_validate_json(line)
        if item.rationale and item.rationale.strip():
            demos.append(
                Demonstration(
                    question=item.question,
                    answer=item.answer,
                    choices=item.choices,
                    rationale=item.rationale,
                )
            )
            if len(demos) == 16:
                break
    return demos


async def _lines(storage: Storage, key: str) -> AsyncIterator[bytes]:
    rest = b""
    async for chunk in storage.stream_async(key):
        data = rest + chunk
        *lines, rest = data.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if rest.strip():
        yield rest


@router.post(
    "",
    status_code=201,
    operation_id="create_job",
    dependencies=[Depends(rate_limited)],
    responses=error_responses(400, 401, 404, 409, 422, 429),
)
async def create_job(
    body: JobCreate,
    response: Response,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    redis: RedisDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=256)
    ] = None,
) -> Job:
    """Create a job. Same `Idempotency-Key` and same body returns the same job; another body 409."""
    digest = body_hash(body.model_dump(mode="json", by_alias=True))
    if idempotency_key is not None:
        try:
            hit = await store.idem_get(tenant, idempotency_key, digest)
        except IdempotencyConflict:
            raise ApiError(
                409, "Idempotency-Key was already used with a different request body"
            ) from None
        if hit is not None:
            return await _replay(store, tenant, hit.job_id)

    if settings.require_live_worker:
        served = await store.served_models()
        if body.model not in served:
            raise ApiError(
                422,
                f"no live worker serves model {body.model!r}; served: "
                + (", ".join(sorted(served)) or "none"),
                details=[ErrorDetail(field="model", code="unknown_model", message="not served")],
            )

    job_id = new_id("job")
    task = body.task
    demos = body.demonstrations
    inline_written = False
    if body.input_file_id is not None:
        fh = await store.file_hash(tenant, body.input_file_id)
        if fh is None:
            raise ApiError(404, f"no file {body.input_file_id!r}")
        file_task = fh["task"]
        if "task" in body.model_fields_set and body.task.value != file_task:
            raise ApiError(
                422,
                f"task {body.task.value!r} differs from the file's task {file_task!r}",
                details=[ErrorDetail(field="task", code="unknown_task", message="task mismatch")],
            )
        task = type(body.task)(file_task)
        n_items = int(fh["items"])
        n_parts = int(fh["parts"])
        inputs = [file_part_key(body.input_file_id, i) for i in range(n_parts)]
        part_size = int(fh["part_size"])
        counts = [part_size] * n_parts
        if n_parts:
            counts[-1] = n_items - part_size * (n_parts - 1)
        total = _expected_total(n_items, body.decoding.counterfactual_fraction)
    else:
        items = body.items or []
        seen: set[str] = set()
        details: list[ErrorDetail] = []
        for i, item in enumerate(items):
            if item.id in seen:
                details.append(
                    ErrorDetail(
                        field=f"items.{i}.id",
                        code="duplicate_id",
                        message=f"id {item.id!r} already appeared",
                    )
                )
            seen.add(item.id)
        if details:
            raise ApiError(422, "duplicate item ids", details=details[: settings.max_error_details])
        n_items = len(items)
        d = body.decoding
        total = n_items + sum(
            is_counterfactual(it.id, d.seed, d.counterfactual_fraction) for it in items
        )
        inputs = []
        counts = []
        for part, start in enumerate(range(0, n_items, settings.shard_size)):
            chunk = items[start : start + settings.shard_size]
            data = "".join(it.model_dump_json(exclude_none=True) + "\n" for it in chunk)
            key = job_input_key(job_id, part)
            await storage.put_async(key, data.encode())
            inputs.append(key)
            counts.append(len(chunk))
        inline_written = True

    if n_items > settings.max_queued_items:
        raise ApiError(
            413 if body.input_file_id is None else 422,
            f"{n_items} items exceed the per-tenant queued-items quota {settings.max_queued_items}",
        )
    if not demos and task not in BUILTIN_POOL_TASKS and inputs:
        demos = await _items_demos(storage, inputs[0]) or None

    async def undo() -> None:
        if inline_written:
            await storage.delete_prefix_async(f"jobs/{job_id}/")

    if idempotency_key is not None and not await store.idem_claim(
        tenant, idempotency_key, digest, job_id, settings.idempotency_ttl_s
    ):
        await undo()
        try:
            hit = await store.idem_get(tenant, idempotency_key, digest)
        except IdempotencyConflict:
            raise ApiError(
                409, "Idempotency-Key was already used with a different request body"
            ) from None
        return await _replay(store, tenant, hit.job_id if hit else None)

    fields: dict[str, str | int | float] = {
        "id": job_id,
        "tenant": tenant,
        "status": JobStatus.VALIDATING.value,
        "task": task.value,
        "model": body.model,
        "decoding": body.decoding.model_dump_json(by_alias=True),
        "demonstrations": json.dumps([d.model_dump() for d in demos]) if demos else "",
        "input_file_id": body.input_file_id or "",
        "metadata": json.dumps(body.metadata) if body.metadata is not None else "",
        "items": n_items,
        "total": total,
        "total_exact": "" if body.input_file_id else "1",
        "completed": 0,
        "failed": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "shards": len(inputs),
        "created_at": now(),
        "created_ts": f"{time.time():.3f}",
    }
    try:
        await store.create_job(
            tenant, job_id, n_items, fields, settings.max_queued_items, settings.max_concurrent_jobs
        )
    except QuotaExceeded as exc:
        await undo()
        if idempotency_key is not None:
            await store.idem_drop(tenant, idempotency_key)
        raise ApiError(429, exc.message, headers={"Retry-After": str(exc.retry_after)}) from None
    await enqueue_shards(redis, body.model, job_id, inputs, counts)
    await store.transition(job_id, ("validating",), JobStatus.IN_PROGRESS.value)
    JOBS_CREATED.inc()
    job = await store.get_job(tenant, job_id)
    assert job is not None
    return job


async def _replay(store: StoreDep, tenant: str, job_id: str | None) -> Job:
    job = await store.get_job(tenant, job_id) if job_id else None
    if job is None:
        raise ApiError(
            409,
            "a request with this Idempotency-Key is still being processed; retry shortly",
            headers={"Retry-After": "1"},
        )
    return job


@router.get("", operation_id="list_jobs", responses=error_responses(400, 401))
async def list_jobs(
    tenant: TenantDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=128)] = None,
) -> JobList:
    """The tenant's jobs, newest first; pass the previous page's `last_id` as `after`."""
    try:
        jobs, has_more = await store.list_jobs(tenant, limit, after)
    except KeyError:
        raise ApiError(400, f"unknown cursor {after!r}") from None
    return JobList(
        data=jobs,
        has_more=has_more,
        first_id=jobs[0].id if jobs else None,
        last_id=jobs[-1].id if jobs else None,
    )


@router.get("/{job_id}", operation_id="get_job", responses=error_responses(401, 404))
async def get_job(job_id: str, tenant: TenantDep, store: StoreDep) -> Job:
    return job_from_hash(await _job_or_404(store, tenant, job_id))


@router.post(
    "/{job_id}/cancel",
    operation_id="cancel_job",
    dependencies=[Depends(rate_limited)],
    responses=error_responses(400, 401, 404, 429),
)
async def cancel_job(job_id: str, tenant: TenantDep, store: StoreDep) -> Job:
    """Cancel: status `cancelling` now, `cancelled` once workers have dropped its shards (within
    one wave). Finished items stay downloadable. Cancelling a finished job changes nothing."""
    await _job_or_404(store, tenant, job_id)
    await store.transition(
        job_id, tuple(s for s in NON_TERMINAL if s != "cancelling"), "cancelling"
    )
    return job_from_hash(await _job_or_404(store, tenant, job_id))


async def _stream_parts(
    storage: Storage, job_id: str, final_key: str, errors: bool
) -> AsyncIterator[bytes]:
    if await storage.exists_async(final_key):
        async for chunk in storage.stream_async(final_key):
            yield chunk
        return
    for key in await storage.list_async(f"jobs/{job_id}/shards/"):
        if key.endswith(".errors.jsonl") != errors:
            continue
        async for chunk in storage.stream_async(key):
            yield chunk


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
    await _job_or_404(store, tenant, job_id)
    key = dataset_keys(job_id)["dataset"]
    return StreamingResponse(_stream_parts(storage, job_id, key, False), media_type=JSONL)


@router.get(
    "/{job_id}/errors",
    operation_id="get_job_errors",
    response_class=StreamingResponse,
    responses=_stream_responses,
)
async def job_errors(
    job_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep
) -> StreamingResponse:
    """ItemErrors as JSONL (items that could not be rationalised)."""
    await _job_or_404(store, tenant, job_id)
    key = dataset_keys(job_id)["errors"]
    return StreamingResponse(_stream_parts(storage, job_id, key, True), media_type=JSONL)


@router.get(
    "/{job_id}/dataset", operation_id="get_job_dataset", responses=error_responses(401, 404)
)
async def job_dataset(
    job_id: str, tenant: TenantDep, settings: SettingsDep, store: StoreDep, storage: StorageDep
) -> DatasetLocation:
    """Presigned URLs (S3) or file:// URLs (local storage) of the dataset files; null while the
    job is not finalized."""
    await _job_or_404(store, tenant, job_id)
    ks = dataset_keys(job_id)
    present = await storage.exists_async(ks["manifest"])
    if not present:
        return DatasetLocation(
            job_id=job_id, jsonl_url=None, parquet_url=None, errors_url=None, manifest_url=None
        )
    order = ["dataset", "parquet", "errors", "manifest"]
    urls = await storage.urls_async([ks[k] for k in order], settings.url_expiry_s)
    expires = now() + settings.url_expiry_s if storage.scheme != "file" else None
    return DatasetLocation(
        job_id=job_id,
        jsonl_url=urls[0],
        parquet_url=urls[1],
        errors_url=urls[2],
        manifest_url=urls[3],
        expires_at=expires,
    )
