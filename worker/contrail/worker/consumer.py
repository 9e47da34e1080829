"""The queue consumer: reads shards of the model's stream in waves, decodes them with one engine,
writes deterministic shard outputs, acknowledges, and finalizes jobs.

Delivery is at least once. A shard's output always goes to the same object key and a shard is
counted once (its index joins the job's `done` set atomically with the counters), so a redelivered
shard overwrites its output and adds nothing. A heartbeat thread announces the worker (and the
model it serves, for /v1/models) with a TTL and keeps the shards in hand from looking idle; shards
of a dead worker go idle and are reclaimed with XAUTOCLAIM after `claim_idle_ms`. A shard
delivered more than `max_deliveries` times goes to the dead-letter stream and its items are
reported failed.

    python -m contrail.worker.consumer [--burst] [--check]

Settings come from CONTRAIL_* variables (contrail.worker.settings.WorkerSettings).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contrail.client.types import (
    DecodingSettings,
    Demonstration,
    Item,
    ItemError,
    JobStatus,
    Manifest,
    RationaleRecord,
    RequestCounts,
    TaskName,
    Usage,
)
from contrail.core.jobs import keys
from contrail.core.jobs.scripts import RELEASE, SHARD_DONE, TRANSITION, decode_hash
from contrail.core.storage import Storage, dataset_keys, shard_errors_key, shard_key
from contrail.worker.dataset_writer import RECORD_SCHEMA
from contrail.worker.engine.base import DecodeRequest, Engine
from contrail.worker.eval_signals import RecordSignals, record_signals
from contrail.worker.evaluation import summary_from_signals
from contrail.worker.pipeline import Plan, plan, to_records
from contrail.worker.settings import WorkerSettings, get_settings

log = logging.getLogger("contrail.worker")

# KEYS: job, stream. ARGV: job id.
FINALIZE_ONCE = """
if redis.call('HSETNX', KEYS[1], 'finalize_queued', '1') == 1 then
  redis.call('XADD', KEYS[2], '*', 'kind', 'finalize', 'job_id', ARGV[1])
  return 1
end
return 0
"""

REDIS_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)


def make_engine(settings: WorkerSettings) -> Engine:
    """The engine this worker decodes with (settings.engine; options from engine_options)."""
    from contrail.worker.engine.factory import create_engine

    return create_engine(
        settings.engine,
        settings.model,
        cache_dir=settings.model_cache_dir,
        options=settings.engine_options,
    )


@dataclass
class Message:
    id: str
    fields: dict[str, str]
    deliveries: int = 1

    @property
    def kind(self) -> str:
        return self.fields.get("kind", "shard")

    @property
    def job_id(self) -> str:
        return self.fields.get("job_id", "")

    @property
    def shard(self) -> int:
        return int(self.fields.get("shard", "0"))


@dataclass
class ShardWork:
    msg: Message
    job: dict[str, str]
    plan: Plan
    n_items: int
    start: int = 0  # index of the shard's first request in the wave
    errors: list[ItemError] = field(default_factory=list)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        engine: Engine | None = None,
        burst: bool = False,
        worker_id: str | None = None,
    ) -> None:
        self.s = settings
        self.burst = burst
        self.host = socket.gethostname()
        self.id = worker_id or f"{self.host}-{os.getpid()}-{int(time.time() * 1000) % 100000}"
        self.r = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.block_ms / 1000 + 10,
            socket_connect_timeout=5,
        )
        self.storage = Storage(settings.storage_url)
        self.stream = keys.stream(settings.model)
        self.dead = keys.dead(settings.model)
        self.engine = engine
        self.stopping = threading.Event()
        self.in_hand: set[str] = set()
        self._lock = threading.Lock()
        self._hb: threading.Thread | None = None
        self._signals = 0
        self.waves = 0

    # ------------------------------------------------------------------ lifecycle
    def startup(self) -> None:
        if self.engine is None:
            self.engine = make_engine(self.s)
        self._retry(self._ensure_group)
        self._beat()
        self._hb = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._hb.start()
        log.info("worker %s serves %s from %s", self.id, self.s.model, self.stream)

    def _ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.stream, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def shutdown(self) -> None:
        self.stopping.set()
        self.release()
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.zrem(keys.WORKERS, self.id)
            pipe.delete(keys.worker(self.id))
            pipe.execute()
        except REDIS_ERRORS:
            pass
        if self.engine is not None:
            self.engine.close()

    def release(self) -> None:
        """Make the shards in hand claimable by other workers at once (idle = the threshold)."""
        with self._lock:
            ids: list[Any] = sorted(self.in_hand)
        if not ids:
            return
        with contextlib.suppress(*REDIS_ERRORS):
            self.r.xclaim(
                self.stream,
                keys.GROUP,
                self.id,
                0,
                ids,
                idle=self.s.claim_idle_ms + 1,
                justid=True,
            )

    def handle_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("signal %s: finishing the wave in hand, then stopping", signum)
            self.stopping.set()
            timer = threading.Timer(self.s.shutdown_grace_s, self._force_exit)
            timer.daemon = True
            timer.start()
        else:
            self._force_exit()

    def _force_exit(self) -> None:
        log.warning("stopping now; releasing %d shard(s)", len(self.in_hand))
        self.release()
        os._exit(1)

    def _beat(self) -> None:
        expires = time.time() + self.s.heartbeat_ttl_s
        pipe = self.r.pipeline(transaction=False)
        wkey = keys.worker(self.id)
        pipe.hset(
            wkey,
            mapping={
                "model": self.s.model,
                "host": self.host,
                "pid": os.getpid(),
                "engine": self.s.engine,
                "waves": self.waves,
                "in_hand": len(self.in_hand),
                "beat_at": f"{time.time():.3f}",
            },
        )
        pipe.expire(wkey, self.s.heartbeat_ttl_s)
        pipe.zadd(keys.WORKERS, {self.id: expires})
        pipe.execute()
        with self._lock:
            ids: list[Any] = sorted(self.in_hand)
        if ids:
            # Keep shards in hand from looking idle (JUSTID: delivery count unchanged). Only
            # entries idle for half the reclaim threshold are touched, so a shard another worker
            # has meanwhile reclaimed (and keeps fresh with its own heartbeat) is never taken
            # back. Needs heartbeat_interval_s well below claim_idle_ms / 2.
            self.r.xclaim(
                self.stream, keys.GROUP, self.id, self.s.claim_idle_ms // 2, ids, justid=True
            )

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.s.heartbeat_interval_s):
            try:
                self._beat()
            except REDIS_ERRORS as exc:
                log.warning("heartbeat failed: %s", exc)

    def _retry(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a Redis operation, retrying across a Redis restart (~1 minute)."""
        attempts = 120
        for i in range(attempts):
            try:
                return fn(*args, **kwargs)
            except REDIS_ERRORS as exc:
                if i == attempts - 1:
                    raise
                log.warning("redis unavailable (%s); retrying", exc)
                time.sleep(0.5)
        return None

    def run(self) -> int:
        self.startup()
        idle_since = time.time()
        try:
            while not self.stopping.is_set():
                try:
                    msgs = self.fetch()
                    if not msgs:
                        if self.burst and self.drained():
                            break
                        continue
                    idle_since = time.time()
                    self.process(msgs)
                except REDIS_ERRORS as exc:
                    log.warning("redis error in loop: %s", exc)
                    time.sleep(0.5)
            _ = idle_since
        finally:
            self.shutdown()
        return 0

    # ------------------------------------------------------------------ reading
    def fetch(self) -> list[Message]:
        n = self.s.batch_shards
        msgs: list[Message] = []
        reply = self.r.xautoclaim(
            self.stream, keys.GROUP, self.id, self.s.claim_idle_ms, start_id="0-0", count=n
        )
        claimed = reply[1] if len(reply) > 1 else []
        for mid, fields in claimed:
            if fields is None:
                continue
            msgs.append(Message(_s(mid), {_s(k): _s(v) for k, v in fields.items()}))
        if msgs:
            for m in msgs:
                info = self.r.xpending_range(self.stream, keys.GROUP, m.id, m.id, 1)
                m.deliveries = int(info[0]["times_delivered"]) if info else 1
            log.info("reclaimed %d idle shard message(s)", len(msgs))
        if len(msgs) < n and not self.stopping.is_set():
            block = None if msgs else self.s.block_ms
            reply2: Any = self.r.xreadgroup(
                keys.GROUP, self.id, {self.stream: ">"}, count=n - len(msgs), block=block
            )
            for _stream, entries in reply2 or []:
                for mid, fields in entries:
                    msgs.append(Message(_s(mid), {_s(k): _s(v) for k, v in fields.items()}))
        with self._lock:
            self.in_hand.update(m.id for m in msgs)
        return msgs

    def drained(self) -> bool:
        summary = self.r.xpending(self.stream, keys.GROUP)
        if int(summary["pending"]) > 0:
            return False
        groups = self.r.xinfo_groups(self.stream)
        return all(int(g.get("lag") or 0) == 0 for g in groups)

    def _done_with(self, msg: Message) -> None:
        self._retry(self.r.xack, self.stream, keys.GROUP, msg.id)
        with self._lock:
            self.in_hand.discard(msg.id)

    def _drop(self, msg: Message) -> None:
        """Stop touching a message (left unacknowledged): it goes idle and is redelivered."""
        with self._lock:
            self.in_hand.discard(msg.id)

    # ------------------------------------------------------------------ processing
    def process(self, msgs: list[Message]) -> None:
        work: list[ShardWork] = []
        finals: list[Message] = []
        for msg in msgs:
            if msg.kind == "finalize":
                finals.append(msg)
                continue
            try:
                w = self.prepare(msg)
            except Exception as exc:
                log.exception("shard %s of %s failed to load", msg.shard, msg.job_id)
                self._failed(msg, f"{type(exc).__name__}: {exc}")
                continue
            if w is not None:
                work.append(w)
        if work:
            self.wave(work)
        for msg in finals:
            try:
                self.finalize(msg.job_id)
                self._done_with(msg)
            except REDIS_ERRORS:
                raise
            except Exception as exc:
                log.exception("finalizing %s failed", msg.job_id)
                self._failed(msg, f"{type(exc).__name__}: {exc}")

    def _failed(self, msg: Message, reason: str) -> None:
        if msg.deliveries >= self.s.max_deliveries:
            self.dead_letter(msg, reason)
        else:
            self._drop(msg)

    def _job(self, job_id: str) -> dict[str, str]:
        raw: dict[Any, Any] = self._retry(self.r.hgetall, keys.job(job_id))
        return decode_hash(raw)

    def prepare(self, msg: Message) -> ShardWork | None:
        job = self._job(msg.job_id)
        status = job.get("status")
        if not job or status in ("completed", "failed", "cancelled"):
            self._done_with(msg)
            return None
        if status == "cancelling":  # cancellation: drop the shard, count it resolved
            self.resolve(msg, job, [], [], 0.0)
            return None
        if msg.deliveries > self.s.max_deliveries:
            self.dead_letter(msg, f"delivered {msg.deliveries} times without finishing")
            return None
        items = [
            Item.model_validate_json(line)
            for line in self.storage.iter_lines(msg.fields["input"])
            if line.strip()
        ]
        demos = (
            [Demonstration.model_validate(d) for d in json.loads(job["demonstrations"])]
            if job.get("demonstrations")
            else None
        )
        settings = DecodingSettings.model_validate_json(job["decoding"])
        assert self.engine is not None
        p = plan(items, TaskName(job["task"]), settings, self.s.model, demos)
        return ShardWork(msg=msg, job=job, plan=p, n_items=len(items), errors=list(p.errors))

    def wave(self, work: list[ShardWork]) -> None:
        assert self.engine is not None
        requests: list[DecodeRequest] = []
        for w in work:
            w.start = len(requests)
            requests.extend(w.plan.decode_requests)
        t0 = time.perf_counter()
        try:
            results = self.engine.generate(requests) if requests else []
        except Exception as exc:
            log.exception("engine failed on a wave of %d requests", len(requests))
            self._retry(self.r.hincrby, keys.STATS, "engine_errors", 1)
            for w in work:
                self._failed(w.msg, f"engine error: {type(exc).__name__}: {exc}")
            return
        elapsed = time.perf_counter() - t0
        self.waves += 1
        for w in work:
            n = len(w.plan.requests)
            out = to_records(w.plan, results[w.start : w.start + n])
            records = [r for r in out if isinstance(r, RationaleRecord)]
            errors = w.errors + [r for r in out if isinstance(r, ItemError)]
            share = elapsed * n / len(requests) if requests else 0.0
            planned = n + len(w.errors)
            self.resolve(w.msg, w.job, records, errors, share, planned, w.n_items)

    def resolve(
        self,
        msg: Message,
        job: Mapping[str, str],
        records: list[RationaleRecord],
        errors: list[ItemError],
        engine_s: float,
        planned: int = 0,
        n_items: int = 0,
    ) -> None:
        """Write the shard's outputs (same keys every delivery), count it once, acknowledge it,
        and queue the job's finalization when this was its last shard."""
        if records or errors:
            self.storage.put(
                shard_key(msg.job_id, msg.shard),
                b"".join(r.model_dump_json(by_alias=True).encode() + b"\n" for r in records),
            )
            self.storage.put(
                shard_errors_key(msg.job_id, msg.shard),
                b"".join(e.model_dump_json().encode() + b"\n" for e in errors),
            )
        _added, done, total, status = self._retry(
            self.r.eval,
            SHARD_DONE,
            3,
            keys.job(msg.job_id),
            keys.job_done(msg.job_id),
            keys.STATS,
            msg.shard,
            len(records),
            len(errors),
            sum(r.prompt_tokens for r in records),
            sum(r.completion_tokens for r in records),
            f"{engine_s:.6f}",
            sum(r.continuations for r in records),
            planned,
            n_items,
        )
        if int(done) >= int(total) and _s(status) in ("in_progress", "cancelling"):
            self.enqueue_finalize(msg.job_id)
        self._done_with(msg)

    def enqueue_finalize(self, job_id: str) -> None:
        """Queue the job's finalization once (flag and message set atomically)."""
        self._retry(self.r.eval, FINALIZE_ONCE, 2, keys.job(job_id), self.stream, job_id)

    def dead_letter(self, msg: Message, reason: str) -> None:
        """Give up on a shard: park it on the dead-letter stream and report its items failed."""
        log.error("dead-lettering shard %s of %s: %s", msg.shard, msg.job_id, reason)
        fields = dict(msg.fields)
        fields.update(reason=reason[:1000], deliveries=str(msg.deliveries), worker=self.id)
        self._retry(self.r.xadd, self.dead, fields)
        self._retry(self.r.hincrby, keys.STATS, "shards_dead", 1)
        if msg.kind == "finalize":
            self._retry(self.r.hset, keys.job(msg.job_id), mapping={"error": f"finalize: {reason}"})
            self._retry(
                self.r.eval,
                TRANSITION,
                1,
                keys.job(msg.job_id),
                "in_progress,finalizing,cancelling",
                "failed",
                int(time.time()),
            )
            self._release_quota(msg.job_id)
            self._done_with(msg)
            return
        message = f"shard {msg.shard} failed after {msg.deliveries} deliveries: {reason}"
        errors: list[ItemError] = []
        try:
            for line in self.storage.iter_lines(msg.fields["input"]):
                if line.strip():
                    item_id = json.loads(line).get("id")
                    errors.append(ItemError(item_id=item_id, code="engine_error", message=message))
        except Exception:
            errors = [
                ItemError(code="engine_error", message=message)
                for _ in range(int(msg.fields.get("count", "1")))
            ]
        job = self._job(msg.job_id)
        n = int(msg.fields.get("count", len(errors)))
        self.resolve(msg, job, [], errors, 0.0, len(errors), n)

    def _release_quota(self, job_id: str) -> None:
        tenant = self._job(job_id).get("tenant", "")
        self._retry(
            self.r.eval,
            RELEASE,
            3,
            keys.job(job_id),
            keys.tenant_queued(tenant),
            keys.tenant_active(tenant),
            job_id,
        )

    # ------------------------------------------------------------------ finalization
    def _shard_lines(self, job_id: str, errors: bool) -> Iterator[bytes]:
        for key in self.storage.list_keys(f"jobs/{job_id}/shards/"):
            if key.endswith(".errors.jsonl") == errors:
                for line in self.storage.iter_lines(key):
                    if line.strip():
                        yield line

    def finalize(self, job_id: str) -> None:
        """Merge shard outputs in item order into dataset.jsonl/.parquet, errors.jsonl and
        manifest.json, then set the terminal status. Idempotent (same outputs if repeated)."""
        job = self._job(job_id)
        status = job.get("status", "")
        if not job or status in ("completed", "failed", "cancelled"):
            return
        self._retry(
            self.r.eval,
            TRANSITION,
            1,
            keys.job(job_id),
            "in_progress",
            "finalizing",
            int(time.time()),
        )
        ks = dataset_keys(job_id)
        completed = failed = ptok = ctok = 0
        by_tag: dict[str, int] = {}
        signals: list[RecordSignals] = []
        with tempfile.TemporaryDirectory(prefix="contrail-final-") as tmp:
            jsonl_path = Path(tmp) / "dataset.jsonl"
            pq_path = Path(tmp) / "dataset.parquet"
            err_path = Path(tmp) / "errors.jsonl"
            with (
                jsonl_path.open("wb") as jf,
                pq.ParquetWriter(pq_path, RECORD_SCHEMA, compression="zstd") as writer,
            ):
                batch: list[dict[str, Any]] = []
                for line in self._shard_lines(job_id, errors=False):
                    jf.write(line + b"\n")
                    rec = json.loads(line)
                    completed += 1
                    ptok += int(rec.get("prompt_tokens", 0))
                    ctok += int(rec.get("completion_tokens", 0))
                    by_tag[rec["tag"]] = by_tag.get(rec["tag"], 0) + 1
                    signals.append(record_signals(RationaleRecord.model_validate(rec)))
                    batch.append(rec)
                    if len(batch) >= 10_000:
                        writer.write_table(pa.Table.from_pylist(batch, RECORD_SCHEMA))
                        batch.clear()
                writer.write_table(pa.Table.from_pylist(batch, RECORD_SCHEMA))
            with err_path.open("wb") as ef:
                for line in self._shard_lines(job_id, errors=True):
                    ef.write(line + b"\n")
                    failed += 1
            self.storage.put(ks["dataset"], jsonl_path)
            self.storage.put(ks["parquet"], pq_path)
            self.storage.put(ks["errors"], err_path)

        job = self._job(job_id)
        cancelled = job.get("status") == "cancelling"
        final = JobStatus.CANCELLED if cancelled else JobStatus.COMPLETED
        done_at = int(time.time())
        total = int(job.get("total", "0")) if cancelled else completed + failed
        created_ts = float(job.get("created_ts") or job["created_at"])
        wall = max(0.0, time.time() - created_ts)
        manifest = Manifest(
            job_id=job_id,
            task=TaskName(job["task"]),
            model=job["model"],
            decoding=DecodingSettings.model_validate_json(job["decoding"]),
            request_counts=RequestCounts(total=total, completed=completed, failed=failed),
            counts_by_tag=by_tag,
            usage=Usage(prompt_tokens=ptok, completion_tokens=ctok),
            created_at=int(job["created_at"]),
            completed_at=done_at,
            engine_seconds=float(job.get("engine_seconds") or 0.0),
            wall_seconds=round(wall, 3),
            files={"dataset": ks["dataset"], "parquet": ks["parquet"], "errors": ks["errors"]},
            metadata=json.loads(job["metadata"]) if job.get("metadata") else None,
            quality=summary_from_signals(signals).model_dump(mode="json"),
        )
        self.storage.put(ks["manifest"], manifest.model_dump_json(indent=2).encode())
        self._retry(
            self.r.hset,
            keys.job(job_id),
            mapping={
                "completed": completed,
                "failed": failed,
                "total": total,
                "prompt_tokens": ptok,
                "completion_tokens": ctok,
                "wall_seconds": f"{wall:.3f}",
            },
        )
        prev = self._retry(
            self.r.eval,
            TRANSITION,
            1,
            keys.job(job_id),
            "cancelling" if cancelled else "finalizing,in_progress",
            final.value,
            done_at,
        )
        if prev is None and not cancelled:  # cancelled while merging: finish as cancelled
            self._retry(
                self.r.eval, TRANSITION, 1, keys.job(job_id), "cancelling", "cancelled", done_at
            )
            final = JobStatus.CANCELLED
        self._release_quota(job_id)
        if prev is not None or final is JobStatus.CANCELLED:
            self._record_duration(final, wall)
        log.info("job %s %s: %d records, %d errors", job_id, final.value, completed, failed)

    def _record_duration(self, status: JobStatus, seconds: float) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hincrby(keys.STATS, f"jobs_{status.value}", 1)
        for b in keys.JOB_SECONDS_BUCKETS:
            if seconds <= b:
                pipe.hincrby(keys.JOB_SECONDS, str(b), 1)
                break
        pipe.hincrby(keys.JOB_SECONDS, "count", 1)
        pipe.hincrbyfloat(keys.JOB_SECONDS, "sum", seconds)
        self._retry(pipe.execute)


def check(settings: WorkerSettings) -> int:
    """Exit code for a container healthcheck: 0 when a live worker of this host serves the
    configured model."""
    r = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    host = socket.gethostname()
    try:
        ids = r.zrangebyscore(keys.WORKERS, time.time(), "+inf")
        for wid in ids:
            h = decode_hash(r.hgetall(keys.worker(_s(wid))))
            if h.get("host") == host and h.get("model") == settings.model:
                return 0
    except REDIS_ERRORS:
        return 2
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="contrail-worker", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="drain the queue, then exit")
    parser.add_argument("--check", action="store_true", help="healthcheck exit code")
    parser.add_argument("--model", help="override CONTRAIL_MODEL")
    parser.add_argument("--engine", choices=["vllm", "reference"], help="override CONTRAIL_ENGINE")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("CONTRAIL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = get_settings()
    updates: dict[str, Any] = {}
    if args.model:
        updates["model"] = args.model
    if args.engine:
        updates["engine"] = args.engine
    if updates:
        settings = settings.model_copy(update=updates)
    if args.check:
        return check(settings)
    worker = Worker(settings, burst=args.burst)
    signal.signal(signal.SIGTERM, worker.handle_signal)
    signal.signal(signal.SIGINT, worker.handle_signal)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
