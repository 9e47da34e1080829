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
from contrail.core.jobs import keys
from contrail.core.jobs.scripts import CREATE_JOB, TRANSITION, _s, decode_hash

NON_TERMINAL = ("validating", "in_progress", "finalizing", "cancelling")


def new_id(prefix: str) -> str:
    """Time-sortable id: millisecond timestamp then 64 random bits."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def now() -> int:
    return int(time.time())


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
