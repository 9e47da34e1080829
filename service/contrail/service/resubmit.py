"""Resubmission: a new job over the items of a finished job that still lack a rationale.

An item is taken again when one of its rationales failed (it is in the counted attempt's errors)
or, for a job that was cancelled, expired or failed, when its shard was never counted. The
items are read shard by shard from the old job's input and written as the new job's own parts,
so memory stays bounded by one shard whatever the job's size.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from obstore.exceptions import NotFoundError

from contrail.client.types import Item
from contrail.core.jobs.protocol import ShardPlan
from contrail.core.jobs.record import JobRecord
from contrail.core.jobs.sizing import rationales_owed
from contrail.core.jobs.store import AsyncJobStore
from contrail.core.storage import Storage, job_input_key, job_input_prefix, shard_output_keys
from contrail.service.creation import JobInput
from contrail.service.errors import ApiError


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
