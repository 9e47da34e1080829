"""Finalization: merge a frozen job's counted shard outputs into its dataset, then end the job.

The job is frozen before a finalize message exists, so the counted attempts read here never
change: the merge is a pure function of them, written with `DatasetWriter` in shard order, and
the manifest takes its times from the record (created, frozen). Repeating a finalization (a
worker died after writing, before the terminal transition) therefore rewrites byte-identical
files, and the terminal transition itself only happens once. Counters are never rewritten here:
they were counted shard by shard.

Scratch space: the dataset is built in a local folder (`scratch_dir`) before upload; a failure
there (a full disk) fails this delivery, and after `max_deliveries` the job ends `failed` with the
fixed message (the cause goes to the log and the dead-letter stream), its shard outputs kept.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from contrail.client.types import (
    ItemError,
    JobStatus,
    Manifest,
    RationaleRecord,
    RequestCounts,
    Usage,
)
from contrail.core.jobs import protocol, states
from contrail.core.jobs.protocol import CountedAttempt
from contrail.core.jobs.queue import JobQueue, QueueMessage
from contrail.core.jobs.record import JobRecord
from contrail.core.quality_signals import record_signals
from contrail.core.storage import Storage, dataset_keys, shard_output_keys
from contrail.distill.export import load_records
from contrail.distill.options import DEFAULT_LAYER, DEFAULT_SIMULATOR
from contrail.distill.report import QualityTotals
from contrail.worker.consumer.job_quality import JobLas, LasReader, job_las
from contrail.worker.consumer.resilience import RedisGuard
from contrail.worker.generation.dataset_writer import DatasetWriter
from contrail.worker.generation.item_errors import FINALIZE_FAILED

log = logging.getLogger("contrail.worker")
# Shards downloaded ahead of the one being merged (threads: storage calls release the GIL).
PREFETCH_SHARDS = 4


class Finalizer:
    def __init__(
        self,
        queue: JobQueue,
        storage: Storage,
        guard: RedisGuard,
        *,
        max_deliveries: int,
        retention_s: int,
        scratch_dir: Path | None = None,
        las_reader: LasReader | None = None,
    ) -> None:
        self.queue = queue
        self.storage = storage
        self.guard = guard
        self.max_deliveries = max_deliveries
        self.retention_s = retention_s
        self.scratch_dir = scratch_dir
        # The simulator for jobs that ask for LAS (default: SmolLM2-135M layer 16, the reader
        # the committed heads were trained on).
        self.las_reader = las_reader or LasReader(DEFAULT_SIMULATOR, DEFAULT_LAYER, None)

    def process(self, msg: QueueMessage) -> None:
        """Handle one finalize message (acknowledged by the terminal transition)."""
        job = self.guard.call(self.queue.job, msg.job_id)
        if job is None or job.status not in states.FROZEN:
            self.guard.call(self.queue.ack, msg.id)
            return
        started = time.monotonic()
        try:
            counts = self.merge(job)
        except Exception as exc:
            self._failed(msg, job, exc)
            return
        final = job.finalize_as or JobStatus.COMPLETED
        call = protocol.finish(job, final, time.time(), self.retention_s, message_id=msg.id)
        result = self.guard.call(self.queue.run, call)
        log.info(  # bench/scale.py reads the merge's seconds from this line
            "job %s %s: %d records, %d errors (%s), merged in %.2f s",
            job.id,
            final.value,
            counts[0],
            counts[1],
            result.outcome,
            time.monotonic() - started,
        )

    def _failed(self, msg: QueueMessage, job: JobRecord, exc: Exception) -> None:
        log.exception("finalizing %s failed (delivery %d)", job.id, msg.deliveries)
        if msg.deliveries < self.max_deliveries:
            raise FinalizeRetry(str(exc)) from exc
        # The tenant reads a fixed message; the exception is in the log above and in the
        # dead-letter reason (operators only).
        error = FINALIZE_FAILED.format(n=msg.deliveries, job_id=job.id)
        call = protocol.finish(
            job,
            JobStatus.FAILED,
            time.time(),
            self.retention_s,
            error=error,
            message_id=msg.id,
            dead_letter_reason=f"{type(exc).__name__}: {exc}",
        )
        self.guard.call(self.queue.run, call)

    # ------------------------------------------------------------------ merging
    def merge(self, job: JobRecord) -> tuple[int, int]:
        """Write dataset.jsonl/.parquet, errors.jsonl and manifest.json from the counted
        attempts; returns (records, errors). Records stream through: memory is bounded by a
        shard's lines and the Parquet writer's row group, whatever the job's size, and the
        manifest's statistics are running totals. Only LAS, when the job asks for it, reads the
        merged dataset back (its simulator needs every record at once)."""
        counted = self.guard.call(self.queue.counted, job.id)
        keys = dataset_keys(job.id)
        quality = QualityTotals()
        las: JobLas | None = None
        with tempfile.TemporaryDirectory(prefix="contrail-final-", dir=self.scratch_dir) as tmp:
            with DatasetWriter(Path(tmp) / "dataset") as writer:
                for record_lines, error_lines in self._shard_lines(job.id, counted):
                    for line in record_lines:
                        record = RationaleRecord.model_validate_json(line)
                        writer.write(record)
                        quality.add(record_signals(record))
                    for line in error_lines:
                        writer.write(ItemError.model_validate_json(line))
            if (writer.records, writer.errors) != (job.completed, job.failed):
                raise RuntimeError(
                    f"counted shards hold {writer.records} records and {writer.errors} errors; "
                    f"the job counted {job.completed} and {job.failed}"
                )
            self.storage.put(keys["dataset"], writer.jsonl_path)
            assert writer.parquet_path is not None
            self.storage.put(keys["parquet"], writer.parquet_path)
            self.storage.put(keys["errors"], writer.errors_path)
            if job.quality is not None and job.quality.las:
                records = load_records(writer.jsonl_path)
                las = job_las(self.storage, job.id, records, self.las_reader)
                del records
        manifest = _manifest(job, keys, quality, las)
        self.storage.put(keys["manifest"], manifest.model_dump_json(indent=2).encode())
        return writer.records, writer.errors

    def _shard_lines(
        self, job_id: str, counted: dict[int, CountedAttempt]
    ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """Each counted attempt's (record lines, error lines), in shard order. The next
        PREFETCH_SHARDS are downloaded in threads while this one is merged, so storage latency
        hides behind the merge's CPU (a 1M-item job has thousands of shards); memory stays
        bounded by that many shards' lines."""

        def fetch(attempt: CountedAttempt) -> tuple[list[bytes], list[bytes]]:
            records_key, errors_key = shard_output_keys(job_id, attempt.shard, attempt.attempt)
            records = self.storage.read_lines(records_key) if attempt.completed else []
            errors = self.storage.read_lines(errors_key) if attempt.failed else []
            return records, errors

        attempts = iter(counted.values())
        with ThreadPoolExecutor(PREFETCH_SHARDS, thread_name_prefix="merge-fetch") as pool:
            window: deque[Future[tuple[list[bytes], list[bytes]]]] = deque(
                pool.submit(fetch, a) for a in itertools.islice(attempts, PREFETCH_SHARDS)
            )
            while window:
                lines = window.popleft().result()
                nxt = next(attempts, None)
                if nxt is not None:
                    window.append(pool.submit(fetch, nxt))
                yield lines


class FinalizeRetry(Exception):
    """This delivery of a finalize message failed; another delivery will try again."""


def _manifest(
    job: JobRecord,
    keys: dict[str, str],
    totals: QualityTotals,
    las: JobLas | None = None,
) -> Manifest:
    """The manifest: a function of the frozen job (and of its LAS, computed once), so repeating
    it is byte-identical."""
    frozen_at = job.frozen_at or job.created_at
    quality = totals.summary()
    if las is not None:
        quality.las, quality.las_note = las.las, las.note
    return Manifest(
        job_id=job.id,
        task=job.task,
        model=job.model,
        decoding=job.decoding,
        template=job.template,
        request_counts=RequestCounts(total=job.total, completed=job.completed, failed=job.failed),
        counts_by_tag=quality.counts_by_tag,
        usage=Usage(prompt_tokens=job.prompt_tokens, completion_tokens=job.completion_tokens),
        created_at=int(job.created_at),
        completed_at=int(frozen_at),
        engine_seconds=round(job.engine_seconds, 6),
        wall_seconds=round(max(0.0, frozen_at - job.created_at), 3),
        files={"dataset": keys["dataset"], "parquet": keys["parquet"], "errors": keys["errors"]},
        metadata=job.metadata,
        quality=quality.model_dump(mode="json"),
        quality_settings=job.quality,
    )
