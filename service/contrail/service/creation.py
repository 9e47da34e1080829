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
    JobStatus,
    QualitySettings,
    TaskName,
    completion_window_seconds,
)
from contrail.core.jobs import protocol
from contrail.core.jobs.protocol import Idempotency, Limits, ShardPlan
from contrail.core.jobs.record import FileRecord, JobRecord
from contrail.core.jobs.sizing import ShardPlanner, ids_from_lines, shard_plans
from contrail.core.jobs.store import AsyncJobStore
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
