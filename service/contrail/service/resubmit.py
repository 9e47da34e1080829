"""Resubmission: a new job over the items of a finished job that still lack a rationale.

An item is taken again when one of its rationales failed (it is in the counted attempt's errors)
or, for a job that was cancelled, expired or failed, when its shard was never counted. The
items are read shard by shard from the old job's input and written as the new job's own parts,
so memory stays bounded by one shard whatever the job's size.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from obstore.exceptions import NotFoundError

from contrail.client.types import Item
from contrail.core.jobs import states
from contrail.core.jobs.protocol import ShardPlan
from contrail.core.jobs.record import JobRecord, new_id
from contrail.core.jobs.sizing import rationales_owed
from contrail.core.jobs.store import AsyncJobStore
from contrail.core.storage import Storage, job_input_key, job_input_prefix, shard_output_keys
from contrail.service import creation
from contrail.service.creation import JobInput, JobSpec
from contrail.service.errors import ApiError
from contrail.service.settings import ApiSettings


async def resubmit(
    store: AsyncJobStore, storage: Storage, settings: ApiSettings, old: JobRecord
) -> JobRecord:
    """The new job over `old`'s unfinished items, created with `old`'s settings; 409 while `old`
    runs or when nothing is left to take again."""
    if old.status not in states.TERMINAL:
        raise ApiError(409, f"job {old.id} is {old.status.value}: resubmit it once it has ended")
    await creation.check_model(store, old.model, settings)
    new_job_id = new_id("job")
    job_input = await resubmission_input(storage, store, old, new_job_id, settings.shard_size)
    if job_input.items == 0:
        await storage.delete_prefix_async(f"jobs/{new_job_id}/")
        await store.drop_pending_input(new_job_id)
        raise ApiError(409, f"job {old.id} has no failed or unfinished items to resubmit")
    spec = JobSpec(
        tenant=old.tenant,
        task=old.task,
        model=old.model,
        decoding=old.decoding,
        demonstrations=old.demonstrations,
        metadata={**(old.metadata or {}), "resubmitted_from": old.id},
        completion_window=old.completion_window,
        quality=old.quality,
        template=old.template,
    )
    record = creation.new_record(new_job_id, spec, job_input, time.time())
    return await creation.create(store, storage, settings, record, job_input, None)


async def _failed_ids(storage: Storage, job_id: str, shard: int, attempt: str) -> set[str]:
    _, errors_key = shard_output_keys(job_id, shard, attempt)
    ids: set[str] = set()
    async for line in storage.lines_async(errors_key):
        item_id = json.loads(line).get("item_id")
        if item_id:
            ids.add(str(item_id))
    return ids


async def unfinished_items(
    storage: Storage, store: AsyncJobStore, record: JobRecord
) -> AsyncIterator[Item]:
    counted = await store.counted(record.id)
    for shard in range(record.shards):
        attempt = counted.get(shard)
        if attempt is not None and attempt.failed == 0:
            continue
        wanted = (
            None
            if attempt is None
            else await _failed_ids(storage, record.id, shard, attempt.attempt)
        )
        try:
            async for line in storage.lines_async(record.input_key(shard)):
                item = Item.model_validate_json(line)
                if wanted is None or item.id in wanted:
                    yield item
        except (NotFoundError, FileNotFoundError):
            raise ApiError(
                409, f"the input of job {record.id} is no longer stored (its file was deleted)"
            ) from None


async def resubmission_input(
    storage: Storage,
    store: AsyncJobStore,
    old: JobRecord,
    new_job_id: str,
    shard_size: int,
) -> JobInput:
    """Write the unfinished items of `old` as the input parts of `new_job_id`."""
    await store.mark_pending_input(new_job_id)
    plans: list[ShardPlan] = []
    chunk: list[Item] = []

    async def flush() -> None:
        data = "".join(it.model_dump_json(exclude_none=True) + "\n" for it in chunk)
        await storage.put_async(job_input_key(new_job_id, len(plans)), data.encode())
        owed = sum(rationales_owed(it.id, old.decoding) for it in chunk)
        plans.append(ShardPlan(len(chunk), owed))
        chunk.clear()

    items = 0
    async for item in unfinished_items(storage, store, old):
        chunk.append(item)
        items += 1
        if len(chunk) == shard_size:
            await flush()
    if chunk:
        await flush()
    return JobInput(job_input_prefix(new_job_id), items, plans, written_by_job=True)
