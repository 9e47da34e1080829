"""Job and file records in Redis: creation with quotas, cursor pagination, idempotency keys,
rate limits, cancellation, and the status transitions the workers use (see keys.py)."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from contrail.client.types import (
    DecodingSettings,
    FileObject,
    Job,
    JobStatus,
    RequestCounts,
    TaskName,
    Usage,
)
from contrail.service import keys

NON_TERMINAL = ("validating", "in_progress", "finalizing", "cancelling")


def new_id(prefix: str) -> str:
    """Time-sortable id: millisecond timestamp then 64 random bits."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def now() -> int:
    return int(time.time())


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def _opt_int(h: Mapping[str, str], k: str) -> int | None:
    v = h.get(k, "")
    return int(v) if v else None


def _total(h: Mapping[str, str], decoding: DecodingSettings, status: JobStatus) -> int:
    """Exact for inline and finished jobs; for a running file job, the planned rationales of
    resolved shards plus an estimate (fraction) for the items not yet planned."""
    total = int(h.get("total", "0"))
    if status.terminal or h.get("total_exact") or not h.get("planned_items"):
        return total
    rest = max(0, int(h.get("items", "0")) - int(h["planned_items"]))
    return int(h.get("planned_total", "0")) + rest + round(rest * decoding.counterfactual_fraction)


def job_from_hash(h: Mapping[str, str]) -> Job:
    decoding = DecodingSettings.model_validate_json(h["decoding"])
    status = JobStatus(h["status"])
    return Job(
        id=h["id"],
        status=status,
        task=TaskName(h["task"]),
        model=h["model"],
        decoding=decoding,
        input_file_id=h.get("input_file_id") or None,
        request_counts=RequestCounts(
            total=_total(h, decoding, status),
            completed=int(h.get("completed", "0")),
            failed=int(h.get("failed", "0")),
        ),
        usage=Usage(
            prompt_tokens=int(h.get("prompt_tokens", "0")),
            completion_tokens=int(h.get("completion_tokens", "0")),
        ),
        metadata=json.loads(h["metadata"]) if h.get("metadata") else None,
        error=h.get("error") or None,
        created_at=int(h["created_at"]),
        in_progress_at=_opt_int(h, "in_progress_at"),
        finalizing_at=_opt_int(h, "finalizing_at"),
        completed_at=_opt_int(h, "completed_at"),
        failed_at=_opt_int(h, "failed_at"),
        cancelling_at=_opt_int(h, "cancelling_at"),
        cancelled_at=_opt_int(h, "cancelled_at"),
    )


def file_from_hash(h: Mapping[str, str]) -> FileObject:
    return FileObject(
        id=h["id"],
        filename=h.get("filename") or None,
        bytes=int(h["bytes"]),
        lines=int(h["lines"]),
        task=TaskName(h["task"]),
        format=h["format"],
        created_at=int(h["created_at"]),
    )


# KEYS: job, tenant jobs, tenant queued, tenant active, seq.
# ARGV: job id, items, max queued, max active, field, value, ...
CREATE_JOB = """
local queued = tonumber(redis.call('GET', KEYS[3]) or '0')
local items = tonumber(ARGV[2])
if queued + items > tonumber(ARGV[3]) then return {0, 'queued', queued} end
local active = redis.call('SCARD', KEYS[4])
if active >= tonumber(ARGV[4]) then return {0, 'active', active} end
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('INCRBY', KEYS[3], items)
redis.call('SADD', KEYS[4], ARGV[1])
return {1, 'ok', seq}
"""

# KEYS: job. ARGV: comma list of allowed current statuses, new status, timestamp.
# Returns the previous status, or false when the job is missing or not in an allowed status.
TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == cur then
    redis.call('HSET', KEYS[1], 'status', ARGV[2], ARGV[2] .. '_at', ARGV[3])
    return cur
  end
end
return false
"""

# KEYS: job, tenant queued, tenant active. ARGV: job id. Releases the job's quota once.
RELEASE = """
if redis.call('HSETNX', KEYS[1], 'released', '1') == 1 then
  local items = tonumber(redis.call('HGET', KEYS[1], 'items') or '0')
  local q = redis.call('DECRBY', KEYS[2], items)
  if q < 0 then redis.call('SET', KEYS[2], 0) end
  redis.call('SREM', KEYS[3], ARGV[1])
  return 1
end
return 0
"""

# KEYS: job, done set, stats. ARGV: shard, completed, failed, prompt, completion, engine s,
# continuations, planned rationales, shard items. Counts a shard once (a redelivery adds nothing).
SHARD_DONE = """
local added = redis.call('SADD', KEYS[2], ARGV[1])
if added == 1 then
  redis.call('HINCRBY', KEYS[1], 'completed', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'prompt_tokens', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'completion_tokens', ARGV[5])
  redis.call('HINCRBYFLOAT', KEYS[1], 'engine_seconds', ARGV[6])
  redis.call('HINCRBY', KEYS[3], 'items_completed', ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'items_failed', ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'prompt_tokens', ARGV[4])
  redis.call('HINCRBY', KEYS[3], 'completion_tokens', ARGV[5])
  redis.call('HINCRBYFLOAT', KEYS[3], 'engine_seconds', ARGV[6])
  redis.call('HINCRBY', KEYS[3], 'continuations', ARGV[7])
  redis.call('HINCRBY', KEYS[3], 'shards_done', 1)
  redis.call('HINCRBY', KEYS[1], 'planned_total', ARGV[8])
  redis.call('HINCRBY', KEYS[1], 'planned_items', ARGV[9])
end
local n = redis.call('SCARD', KEYS[2])
local total = tonumber(redis.call('HGET', KEYS[1], 'shards') or '0')
local status = redis.call('HGET', KEYS[1], 'status') or ''
return {added, n, total, status}
"""


class QuotaExceeded(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class IdempotencyConflict(Exception):
    pass


@dataclass
class IdemHit:
    job_id: str | None  # None: key claimed by a request still in flight


def body_hash(payload: Any) -> str:
    return hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


class JobStore:
    """The API's view of the Redis records (async)."""

    def __init__(self, redis: Redis) -> None:
        self.r = redis

    # ---------------------------------------------------------------- files
    async def save_file(
        self, tenant: str, fobj: FileObject, parts: int, items: int, part_size: int
    ) -> None:
        await self.r.hset(
            keys.file(fobj.id),
            mapping={
                "id": fobj.id,
                "tenant": tenant,
                "filename": fobj.filename or "",
                "bytes": fobj.bytes,
                "lines": fobj.lines,
                "task": fobj.task.value,
                "format": fobj.format,
                "created_at": fobj.created_at,
                "parts": parts,
                "items": items,
                "part_size": part_size,
            },
        )

    async def file_hash(self, tenant: str, file_id: str) -> dict[str, str] | None:
        h = decode_hash(await self.r.hgetall(keys.file(file_id)))
        if not h or h.get("tenant") != tenant:
            return None
        return h

    # ---------------------------------------------------------------- jobs
    async def job_hash(self, tenant: str, job_id: str) -> dict[str, str] | None:
        h = decode_hash(await self.r.hgetall(keys.job(job_id)))
        if not h or h.get("tenant") != tenant:
            return None
        return h

    async def get_job(self, tenant: str, job_id: str) -> Job | None:
        h = await self.job_hash(tenant, job_id)
        return job_from_hash(h) if h else None

    async def create_job(
        self,
        tenant: str,
        job_id: str,
        items: int,
        fields: Mapping[str, str | int | float],
        max_queued: int,
        max_active: int,
    ) -> None:
        argv: list[str | int | float] = [job_id, items, max_queued, max_active]
        for k, v in fields.items():
            argv += [k, v]
        ok, reason, value = await self.r.eval(  # type: ignore[misc]
            CREATE_JOB,
            5,
            keys.job(job_id),
            keys.tenant_jobs(tenant),
            keys.tenant_queued(tenant),
            keys.tenant_active(tenant),
            keys.SEQ,
            *argv,
        )
        if int(ok) != 1:
            if _s(reason) == "queued":
                raise QuotaExceeded(
                    f"queued-items quota exceeded: {int(value)} items queued, this job adds "
                    f"{items}, the limit is {max_queued}; retry when running jobs finish",
                    retry_after=30,
                )
            raise QuotaExceeded(
                f"concurrent-jobs quota exceeded: {int(value)} jobs running, the limit is "
                f"{max_active}; retry when one finishes",
                retry_after=30,
            )

    async def transition(self, job_id: str, allowed: tuple[str, ...], new: str) -> str | None:
        prev = await self.r.eval(  # type: ignore[misc]
            TRANSITION, 1, keys.job(job_id), ",".join(allowed), new, now()
        )
        return _s(prev) if prev else None

    async def list_jobs(self, tenant: str, limit: int, after: str | None) -> tuple[list[Job], bool]:
        zkey = keys.tenant_jobs(tenant)
        if after:
            score = await self.r.zscore(zkey, after)
            if score is None:
                raise KeyError(after)
            ids = await self.r.zrevrangebyscore(
                zkey, f"({int(score)}", "-inf", start=0, num=limit + 1
            )
        else:
            ids = await self.r.zrevrange(zkey, 0, limit)
        has_more = len(ids) > limit
        ids = ids[:limit]
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(keys.job(_s(i)))
        raws = await pipe.execute()
        jobs = [job_from_hash(decode_hash(raw)) for raw in raws if raw]
        return jobs, has_more

    # ---------------------------------------------------------------- idempotency
    async def idem_get(self, tenant: str, key: str, digest: str) -> IdemHit | None:
        raw = await self.r.get(keys.idempotency(tenant, key))
        if raw is None:
            return None
        stored_digest, _, job_id = _s(raw).partition(" ")
        if stored_digest != digest:
            raise IdempotencyConflict(key)
        return IdemHit(job_id or None)

    async def idem_claim(self, tenant: str, key: str, digest: str, job_id: str, ttl: int) -> bool:
        return bool(
            await self.r.set(keys.idempotency(tenant, key), f"{digest} {job_id}", nx=True, ex=ttl)
        )

    async def idem_drop(self, tenant: str, key: str) -> None:
        await self.r.delete(keys.idempotency(tenant, key))

    # ---------------------------------------------------------------- rate limit
    async def hit_rate(self, tenant: str, limit: int) -> int | None:
        """Count one request; the seconds to wait when over the per-minute limit, else None."""
        t = time.time()
        window = int(t // 60)
        k = keys.rate(tenant, window)
        pipe = self.r.pipeline(transaction=True)
        pipe.incr(k)
        pipe.expire(k, 120)
        n, _ = await pipe.execute()
        if int(n) > limit:
            return max(1, int(60 - (t % 60)) + 1)
        return None

    # ---------------------------------------------------------------- models
    async def served_models(self) -> dict[str, int]:
        t = time.time()
        await self.r.zremrangebyscore(keys.WORKERS, "-inf", t)
        ids = await self.r.zrangebyscore(keys.WORKERS, t, "+inf")
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hget(keys.worker(_s(i)), "model")
        models: dict[str, int] = {}
        for m in await pipe.execute():
            if m is not None:
                models[_s(m)] = models.get(_s(m), 0) + 1
        return models
