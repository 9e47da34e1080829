"""The workers' (and the reconciler's) side of the protocol, synchronous: reading a stream (a
model's shards for its decode workers, or the finalize stream for the finalizers), keeping
messages in hand alive, giving them back, and running the protocol's calls.

Delivery is at least once. A message stays in the consumer group's pending list until the script
that consumes its result acknowledges and deletes it, so the stream only holds live work. A
worker that dies stops touching its messages; they go idle and another worker reclaims them
(XAUTOCLAIM), which spends a delivery. A message given back on purpose (`release`) keeps its
delivery count.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import redis
from redis.exceptions import ResponseError

from contrail.core.jobs import keys
from contrail.core.jobs.protocol import SCRIPTS, Call, CountedAttempt, parse_done
from contrail.core.jobs.record import JobRecord, decode_hash, text

T = TypeVar("T")


@dataclass
class QueueMessage:
    """One stream message: a shard to decode or a job to finalize."""

    id: str
    kind: str  # "shard" | "finalize"
    job_id: str
    shard: int = -1
    items: int = 0
    rationales: int = 0
    deliveries: int = 1  # including this one and those before a release

    @classmethod
    def from_fields(cls, msg_id: Any, raw: Mapping[Any, Any], delivered: int) -> QueueMessage:
        f = decode_hash(raw)
        return cls(
            id=text(msg_id),
            kind=f.get("kind", "shard"),
            job_id=f.get("job_id", ""),
            shard=int(f.get("shard", "-1")),
            items=int(f.get("items", "0")),
            rationales=int(f.get("rationales", "0")),
            deliveries=int(f.get("prior_deliveries", "0")) + delivered,
        )

    def fields(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "job_id": self.job_id,
            "shard": str(self.shard),
            "items": str(self.items),
            "rationales": str(self.rationales),
        }


Role = Literal["decode", "finalizer"]  # keys.DECODE, keys.FINALIZER


def ensure_group(r: redis.Redis, model: str | None, stream: str | None = None) -> None:
    """The consumer group of a model's stream (or of `stream`, the finalize stream), from the
    stream's start so messages added before it existed are read too."""
    if model is not None:
        r.sadd(keys.MODELS, model)  # /metrics reports this model's queue from now on
    try:
        r.xgroup_create(stream or keys.stream(str(model)), keys.GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class JobQueue:
    """One stream plus the job records, as seen by a worker: a model's shard stream for its
    decode workers (`JobQueue(r, model)`), the finalize stream for the finalizers
    (`JobQueue.finalizers(r)`)."""

    def __init__(self, r: redis.Redis, model: str, *, role: Role = "decode") -> None:
        self.r = r
        self.model = model
        self.role: Role = role
        self.stream = keys.FINALIZE_STREAM if role == keys.FINALIZER else keys.stream(model)
        self._scripts = {name: r.register_script(src) for name, src in SCRIPTS.items()}

    @classmethod
    def finalizers(cls, r: redis.Redis) -> JobQueue:
        return cls(r, "", role="finalizer")

    def run(self, call: Call[T]) -> T:
        return call.parse(self._scripts[call.script](keys=call.keys, args=call.args))

    # ------------------------------------------------------------------ records
    def job(self, job_id: str) -> JobRecord | None:
        raw = self.r.hgetall(keys.job(job_id))
        return JobRecord.from_hash(raw) if raw else None

    def counted(self, job_id: str) -> dict[int, CountedAttempt]:
        return parse_done(self.r.hgetall(keys.job_done(job_id)))

    def is_counted(self, job_id: str, shard: int) -> bool:
        return bool(self.r.hexists(keys.job_done(job_id), str(shard)))

    # ------------------------------------------------------------------ reading
    def ensure_group(self) -> None:
        if self.role == keys.FINALIZER:
            ensure_group(self.r, None, self.stream)
        else:
            ensure_group(self.r, self.model)

    def read(self, consumer: str, count: int, block_ms: int | None) -> list[QueueMessage]:
        """New messages for `consumer` (XREADGROUP; waits up to block_ms when none)."""
        try:
            reply: Any = self.r.xreadgroup(
                keys.GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()  # Redis lost its data (no AOF): start the queue again
            return []
        return [
            QueueMessage.from_fields(mid, fields, 1)
            for _stream, entries in reply or []
            for mid, fields in entries
            if fields
        ]

    def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[QueueMessage]:
        """Messages idle for min_idle_ms (their worker died), now owned by `consumer`."""
        reply: Any = self.r.xautoclaim(
            self.stream, keys.GROUP, consumer, min_idle_ms, start_id="0-0", count=count
        )
        # Redis >= 7 answers 3 elements, 6.2 answers 2: index, don't unpack.
        claimed = [(mid, fields) for mid, fields in (reply[1] if len(reply) > 1 else []) if fields]
        out = []
        for mid, fields in claimed:
            info = self.r.xpending_range(self.stream, keys.GROUP, mid, mid, 1)
            delivered = int(info[0]["times_delivered"]) if info else 1
            out.append(QueueMessage.from_fields(mid, fields, delivered))
        return out

    def ack(self, message_id: str) -> None:
        """Acknowledge and delete a message that needs no result (its job no longer wants it)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.xack(self.stream, keys.GROUP, message_id)
        pipe.xdel(self.stream, message_id)
        pipe.execute()

    def touch(self, consumer: str, message_ids: Sequence[str], min_idle_ms: int) -> None:
        """Reset the idle time of messages in hand (delivery count unchanged). Only messages
        idle for at least min_idle_ms are touched, so one another worker has meanwhile
        reclaimed (and keeps fresh itself) is never taken back."""
        if message_ids:
            self.r.xclaim(
                self.stream, keys.GROUP, consumer, min_idle_ms, list(message_ids), justid=True
            )

    def drained(self) -> bool:
        """No message waiting or in hand (burst mode stops then)."""
        if int(self.r.xpending(self.stream, keys.GROUP)["pending"]) > 0:
            return False
        return all(int(g.get("lag") or 0) == 0 for g in self.r.xinfo_groups(self.stream))

    def live_messages(self) -> list[QueueMessage]:
        """Every message in the stream (waiting or in hand): the reconciler's view. The stream
        only holds live work because messages are deleted when acknowledged."""
        out: list[QueueMessage] = []
        start = "-"
        while True:
            entries: Any = self.r.xrange(self.stream, start, "+", count=1000)
            out += [QueueMessage.from_fields(mid, f, 0) for mid, f in entries]
            if len(entries) < 1000:
                return out
            start = "(" + text(entries[-1][0])

    # ------------------------------------------------------------------ workers
    def announce(self, worker_id: str, info: Mapping[str, str | int], ttl_s: int) -> None:
        """Heartbeat: the worker, its role and the model it serves, alive for ttl_s."""
        pipe = self.r.pipeline(transaction=False)
        wkey = keys.worker(worker_id)
        mapping: dict[str, str | int] = {
            "model": self.model,
            "role": self.role,
            "host": socket.gethostname(),
        }
        mapping.update(info)
        pipe.hset(wkey, mapping=mapping)  # type: ignore[arg-type]
        pipe.expire(wkey, ttl_s)
        pipe.zadd(keys.WORKERS, {worker_id: time.time() + ttl_s})
        pipe.execute()

    def retire(self, worker_id: str) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(keys.WORKERS, worker_id)
        pipe.delete(keys.worker(worker_id))
        pipe.execute()

    def live_workers(self) -> list[dict[str, str]]:
        ids = self.r.zrangebyscore(keys.WORKERS, time.time(), "+inf")
        pipe = self.r.pipeline(transaction=False)
        for wid in ids:
            pipe.hgetall(keys.worker(text(wid)))
        return [decode_hash(h) for h in pipe.execute() if h]

    def count_stat(self, name: str, n: int = 1) -> None:
        self.r.hincrby(keys.STATS, name, n)
