"""Shard processing: turn a wave of shard messages into counted shard outputs.

For each message: skip it when its job no longer wants it (frozen, finished, deleted) or when the
shard is already counted (a redelivery: no engine call); dead-letter it when it has been
delivered too often; otherwise load its items and plan its prompts. All planned shards are
decoded in one engine call (a wave). Each shard's records and errors are written under a fresh
attempt key, then counted once, atomically with the acknowledgement of its message. An attempt
that loses the race (another attempt was counted first, or the job froze meanwhile) removes its
own files and changes nothing else.

When the engine raises on a wave, the wave is split in halves and retried until the shard that
fails alone is found: only that one is charged a failed delivery, its wave-mates are counted.
A redelivered shard (its earlier delivery's worker may have died on one of its items) is decoded
on its own, an item at a time, under the poison ledger of `contrail.worker.consumer.poison`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from contrail.client.types import FinishReason, Item, ItemError, JobStatus, RationaleRecord
from contrail.core.jobs import protocol
from contrail.core.jobs.protocol import ShardOutcome
from contrail.core.jobs.queue import JobQueue, QueueMessage
from contrail.core.jobs.record import JobRecord
from contrail.core.jobs.sizing import owed_tags
from contrail.core.storage import Storage, shard_output_keys
from contrail.worker.consumer.poison import PoisonLedger
from contrail.worker.consumer.resilience import RedisGuard
from contrail.worker.engine.base import DecodeRequest, DecodeResult, Engine
from contrail.worker.generation.pipeline import Plan, plan, split_request_id, to_records

log = logging.getLogger("contrail.worker")

# What a tenant reads in errors.jsonl when a shard is given up; the cause stays in the log.
GAVE_UP = (
    "this item's shard could not be processed after {n} deliveries; the worker log has the cause"
)


@dataclass
class ShardWork:
    msg: QueueMessage
    job: JobRecord
    plan: Plan
    requests: list[DecodeRequest] = field(default_factory=list)  # ids unique within the wave


@dataclass
class WaveReport:
    decoded: int = 0
    skipped: int = 0
    failed: list[QueueMessage] = field(default_factory=list)


class ShardProcessor:
    def __init__(
        self,
        queue: JobQueue,
        storage: Storage,
        engine: Engine,
        guard: RedisGuard,
        *,
        model: str,
        max_deliveries: int,
        done_with: Callable[[QueueMessage], None],
    ) -> None:
        self.queue = queue
        self.storage = storage
        self.engine = engine
        self.guard = guard
        self.model = model
        self.max_deliveries = max_deliveries
        self.done_with = done_with  # the message left our hands (acknowledged or given up)

    # ------------------------------------------------------------------ preparing
    def prepare(self, msg: QueueMessage) -> ShardWork | None:
        """The shard's planned work, or None when the message needs no decoding."""
        job = self.guard.call(self.queue.job, msg.job_id)
        if job is None or job.status is not JobStatus.IN_PROGRESS:
            self._ack_unwanted(msg, job)
            return None
        if self.guard.call(self.queue.is_counted, msg.job_id, msg.shard):
            log.info("shard %s of %s already counted: no decoding", msg.shard, msg.job_id)
            self.guard.call(self.queue.count_stat, "shards_skipped")
            self._ack(msg)
            return None
        if msg.deliveries > self.max_deliveries:
            self.dead_letter(msg, job, f"delivered {msg.deliveries} times without finishing")
            return None
        lines = self.storage.read_lines(job.input_key(msg.shard))
        items = [Item.model_validate_json(line) for line in lines]
        shard_plan = plan(
            items,
            job.task,
            job.decoding,
            self.model,
            job.demonstrations,
            job.template,
            self.engine.max_prompt_chars,
        )
        prefix = f"{msg.job_id}/{msg.shard}/"
        requests = [
            replace(r, request_id=prefix + r.request_id) for r in shard_plan.decode_requests
        ]
        return ShardWork(msg, job, shard_plan, requests)

    def _ack_unwanted(self, msg: QueueMessage, job: JobRecord | None) -> None:
        """A shard of a job that is frozen, finished or gone: acknowledge it, decode nothing."""
        status = job.status.value if job else "deleted"
        log.info("shard %s of %s dropped: job is %s", msg.shard, msg.job_id, status)
        self._ack(msg)

    def _ack(self, msg: QueueMessage) -> None:
        self.guard.call(self.queue.ack, msg.id)
        self.done_with(msg)

    # ------------------------------------------------------------------ decoding
    def decode(self, work: Sequence[ShardWork]) -> WaveReport:
        report = WaveReport()
        fresh = [w for w in work if w.msg.deliveries <= 1]
        for w, results, seconds in self._decode_isolating(fresh, report) if fresh else []:
            self._resolve(w, results, seconds)
            report.decoded += 1
        for w in (w for w in work if w.msg.deliveries > 1):
            # Counted one by one: a death on a later shard does not undo this one's work.
            alone = self._decode_alone(w)
            if alone is None:
                report.failed.append(w.msg)
                continue
            self._resolve(*alone)
            report.decoded += 1
        return report

    def _decode_alone(self, w: ShardWork) -> tuple[ShardWork, list[DecodeResult], float] | None:
        """A redelivered shard, one item per engine call, each marked in flight first; items an
        earlier attempt died on are set aside (worker_crashed) instead of decoded again. An item
        the engine raises on is an engine_error alone; when it raises on every item the engine,
        not the items, is at fault: None, and the shard is charged a failed delivery as before."""
        ledger = PoisonLedger(self.queue.r, w.msg.job_id, w.msg.shard)
        dead = self.guard.call(ledger.settle)
        log.warning(
            "shard %s of %s is on delivery %d: decoding it alone, item by item%s",
            w.msg.shard,
            w.msg.job_id,
            w.msg.deliveries,
            f"; setting aside {sorted(dead)} (in flight when a worker died)" if dead else "",
        )
        t0 = time.perf_counter()
        results: list[DecodeResult] = []
        attempted = raised = 0
        for item_id, requests in _by_item(w.requests, f"{w.msg.job_id}/{w.msg.shard}/"):
            if item_id in dead:
                self.guard.call(self.queue.count_stat, "items_set_aside")
                results += [
                    _failed(r, "worker_crashed: in flight when a worker died") for r in requests
                ]
                continue
            self.guard.call(ledger.in_flight, item_id)
            attempted += 1
            try:
                results += self.engine.generate(requests)
            except Exception as exc:
                log.exception("engine failed on item %r of shard %s", item_id, w.msg.shard)
                self.guard.call(self.queue.count_stat, "engine_errors")
                results += [_failed(r, f"engine_error: {exc}") for r in requests]
                raised += 1
            self.guard.call(ledger.landed)
        if attempted > 1 and raised == attempted:
            return None
        return w, results, time.perf_counter() - t0

    def _decode_isolating(
        self, work: list[ShardWork], report: WaveReport
    ) -> list[tuple[ShardWork, list[DecodeResult], float]]:
        requests = [r for w in work for r in w.requests]
        t0 = time.perf_counter()
        try:
            results = self.engine.generate(requests) if requests else []
        except Exception:
            log.exception("engine failed on %d shard(s) (%d requests)", len(work), len(requests))
            self.guard.call(self.queue.count_stat, "engine_errors")
            if len(work) == 1:
                report.failed.append(work[0].msg)
                return []
            half = len(work) // 2
            return self._decode_isolating(work[:half], report) + self._decode_isolating(
                work[half:], report
            )
        elapsed = time.perf_counter() - t0
        by_id = {r.request_id: r for r in results}
        out = []
        for w in work:
            mine = [by_id[r.request_id] for r in w.requests if r.request_id in by_id]
            share = elapsed * len(w.requests) / len(requests) if requests else 0.0
            out.append((w, mine, share))
        return out

    def _resolve(self, w: ShardWork, results: list[DecodeResult], engine_s: float) -> None:
        prefix = f"{w.msg.job_id}/{w.msg.shard}/"
        unprefixed = [replace(r, request_id=r.request_id.removeprefix(prefix)) for r in results]
        out = w.plan.errors + to_records(w.plan, unprefixed)
        records = [r for r in out if isinstance(r, RationaleRecord)]
        errors = [r for r in out if isinstance(r, ItemError)]
        if len(records) + len(errors) != w.msg.rationales:
            log.error(
                "shard %s of %s: %d outputs for %d rationales owed",
                w.msg.shard,
                w.msg.job_id,
                len(records) + len(errors),
                w.msg.rationales,
            )
        outcome = ShardOutcome(
            shard=w.msg.shard,
            attempt=secrets.token_hex(6),
            completed=len(records),
            failed=len(errors),
            prompt_tokens=sum(r.prompt_tokens for r in records),
            completion_tokens=sum(r.completion_tokens for r in records),
            engine_seconds=engine_s,
            continuations=sum(r.continuations for r in records),
        )
        self._write_and_count(w.msg, outcome, records, errors)

    # ------------------------------------------------------------------ writing, counting
    def _write_and_count(
        self,
        msg: QueueMessage,
        outcome: ShardOutcome,
        records: Sequence[RationaleRecord],
        errors: Sequence[ItemError],
        dead_letter: tuple[str, dict[str, str]] | None = None,
    ) -> None:
        records_key, errors_key = shard_output_keys(msg.job_id, msg.shard, outcome.attempt)
        if records:
            self.storage.put(records_key, _jsonl(r.model_dump_json(by_alias=True) for r in records))
        if errors:
            self.storage.put(errors_key, _jsonl(e.model_dump_json() for e in errors))
        counted = self._count(msg, outcome, dead_letter)
        if not counted.accepted:
            # Another attempt was counted first, or the job froze: this one never counts.
            written = [(records_key, records), (errors_key, errors)]
            self.storage.delete([key for key, rows in written if rows])

    def _count(
        self,
        msg: QueueMessage,
        outcome: ShardOutcome,
        dead_letter: tuple[str, dict[str, str]] | None = None,
    ) -> protocol.Counted:
        call = protocol.count_shard(
            msg.job_id, self.model, outcome, msg.id, time.time(), dead_letter
        )
        counted: protocol.Counted = self.guard.call(self.queue.run, call)
        self.done_with(msg)
        return counted

    # ------------------------------------------------------------------ giving up
    def dead_letter(self, msg: QueueMessage, job: JobRecord | None, reason: str) -> None:
        """Give up on a shard: one error per rationale it owed, counted like a result, and the
        message parked on the dead-letter stream. A shard already counted keeps its records."""
        log.error("dead-lettering shard %s of %s: %s", msg.shard, msg.job_id, reason)
        errors = self._gave_up_errors(msg, job)
        outcome = ShardOutcome(msg.shard, f"dead-{secrets.token_hex(4)}", 0, len(errors))
        self._write_and_count(msg, outcome, [], errors, (reason, msg.fields()))

    def _gave_up_errors(self, msg: QueueMessage, job: JobRecord | None) -> list[ItemError]:
        message = GAVE_UP.format(n=msg.deliveries)
        anonymous = [ItemError(code="engine_error", message=message)] * msg.rationales
        if job is None:
            return anonymous
        try:
            lines = self.storage.read_lines(job.input_key(msg.shard))
            ids = [Item.model_validate_json(line).id for line in lines]
        except Exception:  # the input itself is what fails: errors without item ids
            return anonymous
        return [
            ItemError(item_id=i, tag=tag, code="engine_error", message=message)
            for i in ids
            for tag in owed_tags(i, job.decoding)
        ]


def _by_item(
    requests: Sequence[DecodeRequest], prefix: str
) -> list[tuple[str, list[DecodeRequest]]]:
    """A shard's requests grouped by item (its factual and counterfactual rationales together),
    in shard order."""
    groups: dict[str, list[DecodeRequest]] = {}
    for r in requests:
        item_id, _tag = split_request_id(r.request_id.removeprefix(prefix))
        groups.setdefault(item_id, []).append(r)
    return list(groups.items())


def _failed(request: DecodeRequest, error: str) -> DecodeResult:
    return DecodeResult(request.request_id, [], "", FinishReason.ERROR, error=error)


def _jsonl(lines: Iterable[str]) -> bytes:
    return b"".join(line.encode() + b"\n" for line in lines)
