"""Turning a create request into a job: its input in storage, its exact shard plan, its record,
and the one atomic creation call (record + queued shards + quota + idempotency key).

The input is prepared before the creation call: an uploaded file's parts already exist, inline
items (and resubmitted items) are written as new parts under the job's id, announced first in the
pending-inputs outbox so that a crash before the creation leaves nothing behind for long.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from contrail.client.types import (
    DecodingSettings,
    Demonstration,
    ErrorDetail,
    Item,
    JobCreate,
    JobStatus,
    QualitySettings,
    TaskName,
    completion_window_seconds,
)
from contrail.core.jobs import protocol
from contrail.core.jobs.protocol import Idempotency, Limits, ShardPlan
from contrail.core.jobs.record import FileRecord, JobRecord, new_id
from contrail.core.jobs.sizing import ShardPlanner, ids_from_lines, shard_plans
from contrail.core.jobs.store import AsyncJobStore, IdempotencyConflict
from contrail.core.storage import Storage, job_input_key, job_input_prefix
from contrail.core.tasks.demos import BUILTIN_POOL_TASKS
from contrail.core.tasks.prompts import PromptTemplate, TemplateError
from contrail.service.errors import ApiError
from contrail.service.metrics import JOBS_CREATED
from contrail.service.settings import ApiSettings

ITEMS_DEMO_POOL = 16


def body_hash(payload: Any) -> str:
    return hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


@dataclass
class JobInput:
    """A job's input as stored: where shard i reads from and how big each shard is."""

    prefix: str
    items: int
    shards: list[ShardPlan]
    input_file_id: str | None = None
    written_by_job: bool = False  # inline parts written for this job (removed if it fails)


# ------------------------------------------------------------------------------- input


async def file_input(storage: Storage, file: FileRecord, decoding: DecodingSettings) -> JobInput:
    """An uploaded file as a job's input; its exact plan comes from the file's id list, read one
    id object at a time (hashing the ids runs off the event loop)."""
    planner = ShardPlanner(file.part_size, decoding)
    id_objects = await storage.list_async(file.ids_prefix)
    for key in id_objects:
        ids = list(ids_from_lines((await storage.get_async(key)).split(b"\n")))
        await asyncio.to_thread(planner.add, ids)
    if not id_objects:  # a file uploaded before id lists existed: read the ids from its parts
        planner.add([i async for i in _part_ids(storage, file)])
    return JobInput(file.part_prefix, file.items, planner.finish(), input_file_id=file.id)


async def _part_ids(storage: Storage, file: FileRecord) -> AsyncIterator[str]:
    for part in range(file.parts):
        async for line in storage.lines_async(f"{file.part_prefix}{part:06d}.jsonl"):
            yield str(json.loads(line)["id"])


async def items_input(
    storage: Storage,
    store: AsyncJobStore,
    job_id: str,
    items: Sequence[Item],
    shard_size: int,
    decoding: DecodingSettings,
) -> JobInput:
    """Inline items written as the job's own shard-sized parts (announced in the outbox first)."""
    await store.mark_pending_input(job_id)
    for part, start in enumerate(range(0, len(items), shard_size)):
        chunk = items[start : start + shard_size]
        data = "".join(it.model_dump_json(exclude_none=True) + "\n" for it in chunk)
        await storage.put_async(job_input_key(job_id, part), data.encode())
    plans = shard_plans((it.id for it in items), shard_size, decoding)
    return JobInput(job_input_prefix(job_id), len(items), plans, written_by_job=True)


def checked_template(template: str | None) -> str | None:
    """The job's template, validated as the planner will use it (422 naming the problem)."""
    if template is None:
        return None
    try:
        PromptTemplate(template)
    except TemplateError as exc:
        raise ApiError(
            422,
            f"invalid template: {exc}",
            details=[ErrorDetail(field="template", code="invalid_template", message=str(exc))],
        ) from None
    return template


def duplicate_ids(items: Sequence[Item]) -> list[ErrorDetail]:
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
    return details


async def demonstrations_from_items(
    storage: Storage, task: TaskName, given: list[Demonstration] | None, first_part: str
) -> list[Demonstration] | None:
    """The job's demonstrations: its own, else the task's built-in pool (None), else the first
    rationales of the job's first part, fixed at creation so every shard is prompted alike."""
    if given or task in BUILTIN_POOL_TASKS:
        return given
    demos: list[Demonstration] = []
    async for line in storage.lines_async(first_part):
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
            if len(demos) == ITEMS_DEMO_POOL:
                break
    return demos or None


# ------------------------------------------------------------------------------- creation


@dataclass
class JobSpec:
    """What a job is asked to do (from a create request, or copied for a resubmission)."""

    tenant: str
    task: TaskName
    model: str
    decoding: DecodingSettings
    demonstrations: list[Demonstration] | None
    metadata: dict[str, str] | None
    completion_window: str
    quality: QualitySettings | None = None
    template: str | None = None


def new_record(job_id: str, spec: JobSpec, job_input: JobInput, now: float) -> JobRecord:
    return JobRecord(
        id=job_id,
        tenant=spec.tenant,
        status=JobStatus.IN_PROGRESS,
        task=spec.task,
        model=spec.model,
        decoding=spec.decoding,
        demonstrations=spec.demonstrations,
        template=spec.template,
        metadata=spec.metadata,
        quality=spec.quality,
        input_file_id=job_input.input_file_id,
        input_prefix=job_input.prefix,
        items=job_input.items,
        total=sum(s.rationales for s in job_input.shards),
        shards=len(job_input.shards),
        completion_window=spec.completion_window,
        created_at=now,
        in_progress_at=now,
        updated_at=now,
        expires_at=now + completion_window_seconds(spec.completion_window),
    )


async def create(
    store: AsyncJobStore,
    storage: Storage,
    settings: ApiSettings,
    record: JobRecord,
    job_input: JobInput,
    idempotency: Idempotency | None,
) -> JobRecord:
    """Run the atomic creation; on any refusal remove the input written for this job."""
    limits = Limits(settings.max_queued_items, settings.max_concurrent_jobs)
    result = await store.run(protocol.create(record, job_input.shards, limits, idempotency))
    if result.outcome == "created":
        JOBS_CREATED.inc()
        return record
    if job_input.written_by_job:
        await storage.delete_prefix_async(f"jobs/{record.id}/")
        await store.drop_pending_input(record.id)
    if result.outcome == "replay":
        replayed = await store.job(record.tenant, result.detail)
        if replayed is None:
            raise ApiError(409, "the job this Idempotency-Key created no longer exists")
        return replayed
    if result.outcome == "file_gone":
        raise ApiError(404, f"no file {record.input_file_id!r} (it is being deleted)")
    if result.outcome == "idempotency_conflict":
        raise ApiError(409, "Idempotency-Key was already used with a different request body")
    if result.outcome == "quota_queued":
        message = (
            f"queued-items quota exceeded: {result.detail} items queued, this job adds "
            f"{record.items}, the limit is {settings.max_queued_items}; retry when running "
            "jobs finish"
        )
    else:
        message = (
            f"concurrent-jobs quota exceeded: {result.detail} jobs running, the limit is "
            f"{settings.max_concurrent_jobs}; retry when one finishes"
        )
    raise ApiError(429, message, headers={"Retry-After": "30"})


def now() -> float:
    return time.time()


async def create_job(
    body: JobCreate,
    tenant: str,
    settings: ApiSettings,
    store: AsyncJobStore,
    storage: Storage,
    idempotency_key: str | None,
) -> JobRecord:
    """A create request, answered: the job an earlier request with the same `Idempotency-Key`
    and body created, or a new one (409 for the same key with another body)."""
    idempotency = None
    if idempotency_key is not None:
        digest = body_hash(body.model_dump(mode="json", by_alias=True))
        idempotency = Idempotency(idempotency_key, digest, settings.idempotency_ttl_s)
        if (earlier := await _replayed(store, tenant, idempotency)) is not None:
            return earlier
    await check_model(store, body.model, settings)
    template = checked_template(body.template)
    job_id = new_id("job")
    task, job_input = await _input_of(body, job_id, tenant, settings, store, storage)
    spec = JobSpec(
        tenant=tenant,
        task=task,
        model=body.model,
        decoding=body.decoding,
        demonstrations=await demonstrations_from_items(
            storage, task, body.demonstrations, f"{job_input.prefix}{0:06d}.jsonl"
        ),
        metadata=body.metadata,
        completion_window=body.completion_window,
        quality=body.quality,
        template=template,
    )
    record = new_record(job_id, spec, job_input, time.time())
    return await create(store, storage, settings, record, job_input, idempotency)


async def _replayed(
    store: AsyncJobStore, tenant: str, idempotency: Idempotency
) -> JobRecord | None:
    """The job an earlier request with this key and body created, if it still exists."""
    try:
        earlier = await store.idempotent_job(tenant, idempotency.key, idempotency.digest)
    except IdempotencyConflict:
        raise ApiError(
            409, "Idempotency-Key was already used with a different request body"
        ) from None
    return await store.job(tenant, earlier) if earlier is not None else None


async def _input_of(
    body: JobCreate,
    job_id: str,
    tenant: str,
    settings: ApiSettings,
    store: AsyncJobStore,
    storage: Storage,
) -> tuple[TaskName, JobInput]:
    """The job's task and input: an uploaded file's parts, or the inline items written as parts
    under the job's id."""
    if body.input_file_id is None:
        items = body.items or []
        if details := duplicate_ids(items):
            raise ApiError(422, "duplicate item ids", details=details[: settings.max_error_details])
        check_size(len(items), settings.max_queued_items, status=413)
        job_input = await items_input(
            storage, store, job_id, items, settings.shard_size, body.decoding
        )
        return body.task, job_input
    file = await store.file(tenant, body.input_file_id)
    if file is None:
        raise ApiError(404, f"no file {body.input_file_id!r}")
    if "task" in body.model_fields_set and body.task != file.task:
        raise ApiError(
            422,
            f"task {body.task.value!r} differs from the file's task {file.task.value!r}",
            details=[ErrorDetail(field="task", code="unknown_task", message="task mismatch")],
        )
    check_size(file.items, settings.max_queued_items, status=422)
    return file.task, await file_input(storage, file, body.decoding)


async def check_model(store: AsyncJobStore, model: str, settings: ApiSettings) -> None:
    """A job's model must be served by a live worker or declared by the deployment (its jobs
    then wait in the queue until a worker for it starts)."""
    if not settings.require_live_worker or model in settings.declared:
        return
    served = await store.served_models()
    if model not in served:
        raise ApiError(
            422,
            f"no live worker serves model {model!r} and the deployment does not declare it; "
            "served: "
            + (", ".join(sorted(served)) or "none")
            + "; declared: "
            + (", ".join(sorted(settings.declared)) or "none"),
            details=[
                ErrorDetail(field="model", code="unknown_model", message="not served or declared")
            ],
        )


def check_size(n_items: int, quota: int, status: int) -> None:
    if n_items > quota:
        raise ApiError(status, f"{n_items} items exceed the per-tenant queued-items quota {quota}")
