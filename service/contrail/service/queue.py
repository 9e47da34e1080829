"""Redis Streams producer: one stream per model, one consumer group of workers.

A job becomes one message per shard ``{kind: "shard", job_id, shard, input}`` (input = the storage
key of the shard's items); when its last shard is resolved a worker adds ``{kind: "finalize",
job_id}``. Workers read many messages at once (XREADGROUP COUNT=N), acknowledge after writing
the shard's output, and reclaim idle messages of dead workers with XAUTOCLAIM.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from contrail.core.jobs import keys


async def ensure_group(r: Redis, model: str) -> None:
    try:
        await r.xgroup_create(keys.stream(model), keys.GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def enqueue_shards(
    r: Redis, model: str, job_id: str, inputs: list[str], counts: list[int]
) -> None:
    """Add one message per shard (pipelined, in chunks); `counts` = items per shard."""
    await ensure_group(r, model)
    stream = keys.stream(model)
    for start in range(0, len(inputs), 1000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(start + 1000, len(inputs))):
            fields: dict[Any, Any] = {
                "kind": "shard",
                "job_id": job_id,
                "shard": i,
                "input": inputs[i],
                "count": counts[i],
            }
            pipe.xadd(stream, fields)
        await pipe.execute()


async def queue_depth(r: Redis) -> dict[str, tuple[int, int]]:
    """model -> (messages not yet delivered, messages delivered but not acknowledged)."""
    out: dict[str, tuple[int, int]] = {}
    async for raw in r.scan_iter(match=keys.stream("*"), count=100):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        model = name[len(keys.stream("")) :]
        try:
            groups = await r.xinfo_groups(name)
        except ResponseError:
            continue
        lag = pending = 0
        for g in groups:
            lag += int(g.get("lag") or 0)
            pending += int(g.get("pending") or 0)
        out[model] = (lag, pending)
    return out
