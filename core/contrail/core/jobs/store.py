"""The API's side of the protocol, asynchronous: job and file records per tenant, cursor
pagination, idempotency look-ups, rate limits, the models live workers serve, and the protocol's
calls (creation, cancellation, deletion) run through the same `Call`s the workers use."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from contrail.core.jobs import keys
from contrail.core.jobs.protocol import SCRIPTS, Call, CountedAttempt, parse_done
from contrail.core.jobs.record import FileRecord, JobRecord, decode_hash, text

T = TypeVar("T")


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


class AsyncJobStore:
    def __init__(self, r: Redis, rate_window_s: int = 60) -> None:
        self.r = r
        # The length of the rate-limit and authentication-throttle windows (a minute; tests
        # shorten it instead of waiting for the wall clock's minute boundary).
        self.window = rate_window_s
        self._scripts = {name: r.register_script(src) for name, src in SCRIPTS.items()}

    async def run(self, call: Call[T]) -> T:
        return call.parse(await self._scripts[call.script](keys=call.keys, args=call.args))

    # ---------------------------------------------------------------- jobs
    async def job(self, tenant: str, job_id: str) -> JobRecord | None:
        """The tenant's job (None for a missing job or another tenant's)."""
        raw = await self.r.hgetall(keys.job(job_id))
        if not raw:
            return None
        record = JobRecord.from_hash(raw)
        return record if record.tenant == tenant else None

    async def counted(self, job_id: str) -> dict[int, CountedAttempt]:
        return parse_done(await self.r.hgetall(keys.job_done(job_id)))

    async def list_jobs(
        self, tenant: str, limit: int, after: str | None
    ) -> tuple[list[JobRecord], bool]:
        """A page of the tenant's jobs, newest first. Ids whose record has expired (retention)
        are dropped from the listing as they are met."""
        zkey = keys.tenant_jobs(tenant)
        top = "+inf"
        if after:
            score = await self.r.zscore(zkey, after)
            if score is None:
                raise KeyError(after)
            top = f"({int(score)}"
        records: list[JobRecord] = []
        while True:
            ids = [text(i) for i in await self.r.zrevrangebyscore(zkey, top, "-inf", 0, limit + 1)]
            raws = await self._hgetall_many([keys.job(i) for i in ids])
            gone = [i for i, raw in zip(ids, raws, strict=True) if not raw]
            if gone:
                await self.r.zrem(zkey, *gone)
                continue  # the page shrank: read it again
            records = [JobRecord.from_hash(raw) for raw in raws]
            break
        return records[:limit], len(records) > limit

    async def _hgetall_many(self, hash_keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        pipe = self.r.pipeline(transaction=False)
        for k in hash_keys:
            pipe.hgetall(k)
        result: list[dict[bytes, bytes]] = await pipe.execute()
        return result

    async def mark_pending_input(self, job_id: str) -> None:
        """Outbox entry before a job's inline input is written: the reconciler deletes the
        input of a creation that never completed (the creation script removes the entry)."""
        await self.r.zadd(keys.PENDING_INPUTS, {job_id: time.time()})

    async def drop_pending_input(self, job_id: str) -> None:
        await self.r.zrem(keys.PENDING_INPUTS, job_id)

    # ---------------------------------------------------------------- files
    async def save_file(self, record: FileRecord) -> None:
        await self.r.hset(keys.file(record.id), mapping=record.to_hash())  # type: ignore[arg-type]

    async def file(self, tenant: str, file_id: str) -> FileRecord | None:
        raw = await self.r.hgetall(keys.file(file_id))
        if not raw:
            return None
        record = FileRecord.from_hash(raw)
        return record if record.tenant == tenant else None

    async def forget_file(self, file_id: str) -> None:
        await self.r.delete(keys.file(file_id), keys.file_jobs(file_id))

    # ---------------------------------------------------------------- idempotency
    async def idempotent_job(self, tenant: str, key: str, digest: str) -> str | None:
        """The job an earlier request with this key created, if any (the creation script
        re-checks atomically; this look-up only spares repeating the work before it)."""
        raw = await self.r.get(keys.idempotency(tenant, key))
        if raw is None:
            return None
        stored_digest, _, job_id = text(raw).partition(" ")
        if stored_digest != digest:
            raise IdempotencyConflict(key)
        return job_id

    # ---------------------------------------------------------------- rate limits
    async def hit_rate(self, tenant: str, limit: int) -> int | None:
        """Count one request; the seconds to wait when over the per-window limit, else None."""
        t = time.time()
        n = await self._count(keys.rate(tenant, int(t // self.window)))
        return _wait_s(t, self.window) if n > limit else None

    async def _count(self, key: str) -> int:
        """Increment a per-window counter (it expires after the window)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, 2 * self.window)
        n, _ = await pipe.execute()
        return int(n)

    async def auth_blocked(self, client: str, limit: int) -> int | None:
        """The seconds to wait when `client` failed to authenticate more than `limit` times
        in this window, else None."""
        t = time.time()
        n = await self.r.get(keys.auth_failures(client, int(t // self.window)))
        return _wait_s(t, self.window) if n is not None and int(n) >= limit else None

    async def count_auth_failure(self, client: str) -> None:
        await self._count(keys.auth_failures(client, int(time.time() // self.window)))

    # ---------------------------------------------------------------- models
    async def served_models(self) -> dict[str, int]:
        """model -> live decode workers announcing it (heartbeats not yet expired)."""
        return {m: n for m, n in (await self._live_roles()).items() if m != keys.FINALIZER}

    async def live_finalizers(self) -> int:
        return (await self._live_roles()).get(keys.FINALIZER, 0)

    async def _live_roles(self) -> dict[str, int]:
        """model -> live decode workers, and keys.FINALIZER -> live finalizers."""
        t = time.time()
        await self.r.zremrangebyscore(keys.WORKERS, "-inf", t)
        ids = await self.r.zrangebyscore(keys.WORKERS, t, "+inf")
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(keys.worker(text(i)), ["model", "role"])
        out: dict[str, int] = {}
        for model, role in await pipe.execute():
            name = keys.FINALIZER if role is not None and text(role) == keys.FINALIZER else model
            if name is not None:
                out[text(name)] = out.get(text(name), 0) + 1
        return out

    async def finalize_depth(self) -> tuple[int, int]:
        """(finalize messages not yet delivered, delivered but not acknowledged)."""
        try:
            groups = await self.r.xinfo_groups(keys.FINALIZE_STREAM)
        except ResponseError:  # no stream yet, or Redis lost its data
            groups = []
        if not groups:  # no finalizer has read it yet: every message waits
            return (int(await self.r.xlen(keys.FINALIZE_STREAM)), 0)
        lag = sum(int(g.get("lag") or 0) for g in groups)
        return (lag, sum(int(g.get("pending") or 0) for g in groups))

    async def backlogs(self, models: Iterable[str]) -> dict[str, int]:
        """model -> messages in its stream: acknowledged messages are deleted, so this is what
        waits or is being worked on (its shards), as XLEN tells an autoscaler."""
        names = sorted(set(models))
        pipe = self.r.pipeline(transaction=False)
        for m in names:
            pipe.xlen(keys.stream(m))
        return {m: int(n) for m, n in zip(names, await pipe.execute(), strict=True)}

    async def stats(self) -> dict[str, str]:
        return decode_hash(await self.r.hgetall(keys.STATS))

    async def queue_depth(self) -> dict[str, tuple[int, int]]:
        """model -> (messages not yet delivered, messages delivered but not acknowledged), for
        the models in the `models` set (one XINFO per model; the keyspace is never scanned)."""
        models = sorted(text(m) for m in await self.r.smembers(keys.MODELS))  # type: ignore[misc]
        pipe = self.r.pipeline(transaction=False)
        for model in models:
            pipe.xinfo_groups(keys.stream(model))
        out: dict[str, tuple[int, int]] = {}
        for model, groups in zip(models, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(groups, ResponseError):
                continue  # the stream is gone (Redis lost its data): nothing queued
            lag = sum(int(g.get("lag") or 0) for g in groups)
            pending = sum(int(g.get("pending") or 0) for g in groups)
            out[model] = (lag, pending)
        return out


def _wait_s(t: float, window: int = 60) -> int:
    """Seconds from `t` until the next window starts (at least 1)."""
    return max(1, int(window - (t % window)) + 1)
