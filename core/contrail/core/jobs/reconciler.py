"""The reconciler: makes sure every non-terminal job keeps moving toward a terminal state.

It runs in the API and in every worker (a background thread each); a leader lease in Redis lets
one of them act at a time. A pass reads only the jobs that are due, from two indexes kept by the
protocol's scripts: `jobs:active` by expiry time and `jobs:progress` by the time of last progress,
so its cost follows the due jobs, not the active ones. Each pass:

- expires jobs whose completion window is over (they finalize as `expired`, keeping the
  rationales finished so far);
- for jobs without progress for `stall_s`, compares what the job still needs with the messages
  really in the streams (they only hold live work): a shard message lost from its model's
  stream is queued again, a frozen job whose finalize message is gone from the finalize stream
  gets a new one;
- deletes the inline input of job creations that never completed (an API that died between
  writing the input and the atomic creation), found through the pending-inputs outbox.

Everything it changes goes through the protocol's scripts, which re-check the job's state
atomically, so a pass racing with the workers or with another reconciler is harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import redis

from contrail.client.types import JobStatus
from contrail.core.jobs import keys, protocol, states
from contrail.core.jobs.queue import JobQueue, QueueMessage
from contrail.core.jobs.record import JobRecord, text
from contrail.core.storage import Storage

log = logging.getLogger("contrail.reconciler")


@dataclass
class ReconcileReport:
    led: bool = False
    expired: list[str] = field(default_factory=list)
    requeued_shards: dict[str, list[int]] = field(default_factory=dict)
    requeued_finalize: list[str] = field(default_factory=list)
    orphan_inputs_removed: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(
        self,
        r: redis.Redis,
        storage: Storage | None,
        *,
        owner: str,
        stall_s: float = 120.0,
        lease_s: float = 30.0,
        pending_input_ttl_s: float = 3600.0,
    ) -> None:
        self.r = r
        self.storage = storage
        self.owner = owner
        self.stall_s = stall_s
        self.lease_s = lease_s
        self.pending_input_ttl_s = pending_input_ttl_s
        self._indexed = False  # jobs of an older release joined the progress index

    # ------------------------------------------------------------------ leadership
    def lead(self) -> bool:
        """Take or keep the leader lease."""
        ms = int(self.lease_s * 1000)
        if self.r.set(keys.RECONCILER, self.owner, nx=True, px=ms):
            return True
        current = self.r.get(keys.RECONCILER)
        if current is not None and text(current) == self.owner:
            self.r.pexpire(keys.RECONCILER, ms)
            return True
        return False

    def resign(self) -> None:
        current = self.r.get(keys.RECONCILER)
        if current is not None and text(current) == self.owner:
            self.r.delete(keys.RECONCILER)

    # ------------------------------------------------------------------ one pass
    def run_once(self, now: float | None = None) -> ReconcileReport:
        report = ReconcileReport()
        if not self.lead():
            return report
        report.led = True
        now = time.time() if now is None else now
        if not self._indexed:
            self._index_older_jobs()
        stalled: list[JobRecord] = []
        for job_id in self._due(now):
            raw = self.r.hgetall(keys.job(job_id))
            if not raw:
                self.r.zrem(keys.ACTIVE_JOBS, job_id)
                self.r.zrem(keys.PROGRESS, job_id)
                continue
            record = JobRecord.from_hash(raw)
            if record.status is JobStatus.IN_PROGRESS and now >= record.expires_at:
                self._expire(record, now, report)
            elif self._stalled(record, now):
                stalled.append(record)
        self._repair(stalled, report)
        self._remove_orphan_inputs(now, report)
        return report

    def _due(self, now: float) -> list[str]:
        """Jobs past their expiry time, and jobs without progress for `stall_s` (a job's record
        decides what is done with it)."""
        expired = self.r.zrangebyscore(keys.ACTIVE_JOBS, "-inf", now)
        stalled = self.r.zrangebyscore(keys.PROGRESS, "-inf", now - self.stall_s)
        return sorted({text(i) for i in [*expired, *stalled]})

    def _index_older_jobs(self) -> None:
        """Once per reconciler: active jobs created before the progress index existed join it
        at their last progress (NX: a fresher entry a script wrote meanwhile wins)."""
        for job_id, _ in self.r.zscan_iter(keys.ACTIVE_JOBS, count=1000):
            if self.r.zscore(keys.PROGRESS, job_id) is not None:
                continue
            raw = self.r.hmget(keys.job(text(job_id)), ["updated_at", "frozen_at", "created_at"])
            times = [float(text(t)) for t in raw if t is not None and text(t)]
            if times:
                self.r.zadd(keys.PROGRESS, {text(job_id): max(times)}, nx=True)
        self._indexed = True

    def _stalled(self, record: JobRecord, now: float) -> bool:
        if record.status not in states.NON_TERMINAL:
            return False
        last = max(record.updated_at or 0.0, record.frozen_at or 0.0, record.created_at)
        return now - last >= self.stall_s

    def _expire(self, record: JobRecord, now: float, report: ReconcileReport) -> None:
        queue = JobQueue(self.r, record.model)
        if queue.run(protocol.expire(record.id, record.model, now)).outcome == "frozen":
            log.info("job %s expired (completion window %s)", record.id, record.completion_window)
            report.expired.append(record.id)

    def _repair(self, stalled: list[JobRecord], report: ReconcileReport) -> None:
        by_model: dict[str, list[JobRecord]] = defaultdict(list)
        for record in stalled:
            by_model[record.model].append(record)
        finalizing = set()
        if any(r.status is not JobStatus.IN_PROGRESS for r in stalled):
            finalizing = {m.job_id for m in JobQueue.finalizers(self.r).live_messages()}
        for model, records in by_model.items():
            queue = JobQueue(self.r, model)
            live = (
                queue.live_messages()
                if any(r.status is JobStatus.IN_PROGRESS for r in records)
                else []
            )
            for record in records:
                self._repair_job(queue, record, live, finalizing, report)

    def _repair_job(
        self,
        queue: JobQueue,
        record: JobRecord,
        live: list[QueueMessage],
        finalizing: set[str],
        report: ReconcileReport,
    ) -> None:
        if record.status is JobStatus.IN_PROGRESS:
            mine = [m for m in live if m.job_id == record.id]
            counted = queue.counted(record.id)
            queued = {m.shard for m in mine if m.kind == "shard"}
            lost = [s for s in range(record.shards) if s not in counted and s not in queued]
            added = queue.run(protocol.requeue(record.id, record.model, lost, False)) if lost else 0
            if added:
                log.warning("job %s: re-queued %d lost shard message(s)", record.id, len(lost))
                report.requeued_shards[record.id] = lost
        elif record.id not in finalizing:
            if not queue.run(protocol.requeue(record.id, record.model, [], True)):
                return
            log.warning("job %s: re-queued its lost finalize message", record.id)
            report.requeued_finalize.append(record.id)

    def _remove_orphan_inputs(self, now: float, report: ReconcileReport) -> None:
        if self.storage is None:
            return
        cutoff = now - self.pending_input_ttl_s
        for job_id in [text(i) for i in self.r.zrangebyscore(keys.PENDING_INPUTS, "-inf", cutoff)]:
            if not self.r.exists(keys.job(job_id)):
                self.storage.delete_prefix(f"jobs/{job_id}/")
                report.orphan_inputs_removed.append(job_id)
            self.r.zrem(keys.PENDING_INPUTS, job_id)


class ReconcilerThread(threading.Thread):
    """Runs passes every `interval_s` until stopped; a failing pass is logged, never fatal."""

    def __init__(self, reconciler: Reconciler, interval_s: float) -> None:
        super().__init__(name="reconciler", daemon=True)
        self.reconciler = reconciler
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.reconciler.run_once()
            except Exception as exc:  # Redis down, storage down: try again next pass
                log.warning("reconciler pass failed: %s", exc)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
        try:
            self.reconciler.resign()
        except Exception as exc:
            log.debug("could not resign the reconciler lease: %s", exc)
