"""Typed calls of the job protocol, without I/O.

Each function returns a `Call`: which Lua script, its keys and arguments, and how to read its
reply. The async store (API) and the sync queue (workers, reconciler) run the same calls, so the
key layout, argument order and reply shapes exist once, here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from contrail.client.types import JobStatus
from contrail.core.jobs import keys, lua, states
from contrail.core.jobs.record import JobRecord, text

T = TypeVar("T")

SCRIPTS: dict[str, str] = {
    "create": lua.CREATE,
    "count_shard": lua.COUNT_SHARD,
    "freeze": lua.FREEZE,
    "finish": lua.FINISH,
    "release": lua.RELEASE,
    "requeue": lua.REQUEUE,
    "delete_job": lua.DELETE_JOB,
    "delete_file": lua.DELETE_FILE,
}


@dataclass(frozen=True)
class Call(Generic[T]):
    script: str
    keys: list[str]
    args: list[str]
    parse: Callable[[Any], T]


def _pair(reply: Any) -> tuple[str, str]:
    return text(reply[0]), text(reply[1])


# ------------------------------------------------------------------------------------ creation


@dataclass(frozen=True)
class ShardPlan:
    """One shard of a job: how many items it reads and rationales it owes."""

    items: int
    rationales: int


@dataclass(frozen=True)
class Limits:
    max_queued_items: int
    max_active_jobs: int


@dataclass(frozen=True)
class Idempotency:
    key: str
    digest: str  # SHA-256 of the request body
    ttl_s: int


@dataclass(frozen=True)
class Created:
    outcome: Literal[
        "created", "replay", "idempotency_conflict", "quota_queued", "quota_active", "file_gone"
    ]
    detail: str  # seq | replayed job id | '' | items queued | jobs active


def create(
    record: JobRecord,
    shards: Sequence[ShardPlan],
    limits: Limits,
    idempotency: Idempotency | None = None,
) -> Call[Created]:
    """Create the job record and queue all its shards in one step (or nothing at all)."""
    if record.shards != len(shards) or record.total != sum(s.rationales for s in shards):
        raise ValueError("the record's shard count and total must match its shard plan")
    fields = record.to_hash()
    idem_key = keys.idempotency(record.tenant, idempotency.key if idempotency else "")
    args: list[str] = [
        record.id,
        str(record.items),
        str(limits.max_queued_items),
        str(limits.max_active_jobs),
        f"{idempotency.digest} {record.id}" if idempotency else "",
        str(idempotency.ttl_s if idempotency else 0),
        idempotency.digest if idempotency else "",
        repr(record.expires_at),
        "1" if record.input_file_id else "0",
        str(len(fields)),
    ]
    for name, value in fields.items():
        args += [name, value]
    for shard in shards:
        args += [str(shard.items), str(shard.rationales)]
    return Call(
        "create",
        [
            keys.job(record.id),
            keys.tenant_jobs(record.tenant),
            keys.tenant_queued(record.tenant),
            keys.tenant_active(record.tenant),
            keys.SEQ,
            keys.stream(record.model),
            keys.ACTIVE_JOBS,
            keys.job_shards(record.id),
            idem_key,
            keys.file_jobs(record.input_file_id or ""),
            keys.PENDING_INPUTS,
            keys.file(record.input_file_id or ""),
            keys.MODELS,
            keys.PROGRESS,
        ],
        args,
        lambda reply: Created(*_pair(reply)),  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------------ shards


@dataclass(frozen=True)
class ShardOutcome:
    """What one attempt at a shard produced (its files are written before it is counted)."""

    shard: int
    attempt: str
    completed: int
    failed: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_seconds: float = 0.0
    continuations: int = 0


@dataclass(frozen=True)
class Counted:
    outcome: Literal["counted", "last", "duplicate", "frozen", "missing"]
    detail: str  # the counted attempt for 'duplicate', the job's status for 'frozen'

    @property
    def accepted(self) -> bool:
        """Whether this attempt is the shard's counted one."""
        return self.outcome in ("counted", "last")


def count_shard(
    job_id: str,
    model: str,
    outcome: ShardOutcome,
    message_id: str,
    now: float,
    dead_letter: tuple[str, dict[str, str]] | None = None,
) -> Call[Counted]:
    """Count a shard attempt once and acknowledge its message (dead_letter: reason, message)."""
    reason, message = dead_letter if dead_letter else ("", {})
    return Call(
        "count_shard",
        [
            keys.job(job_id),
            keys.job_done(job_id),
            keys.STATS,
            keys.stream(model),
            keys.dead(model),
            keys.FINALIZE_STREAM,
            keys.PROGRESS,
        ],
        [
            job_id,
            str(outcome.shard),
            outcome.attempt,
            str(outcome.completed),
            str(outcome.failed),
            str(outcome.prompt_tokens),
            str(outcome.completion_tokens),
            f"{outcome.engine_seconds:.6f}",
            str(outcome.continuations),
            message_id,
            keys.GROUP,
            repr(now),
            reason[:1000],
            json.dumps(message, sort_keys=True) if dead_letter else "",
        ],
        lambda reply: Counted(*_pair(reply)),  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class CountedAttempt:
    """A shard's counted attempt, from the job's `done` hash."""

    shard: int
    attempt: str
    completed: int
    failed: int


def parse_done(raw: dict[Any, Any]) -> dict[int, CountedAttempt]:
    out: dict[int, CountedAttempt] = {}
    for k, v in raw.items():
        attempt, completed, failed = text(v).split(" ")
        shard = int(text(k))
        out[shard] = CountedAttempt(shard, attempt, int(completed), int(failed))
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------ lifecycle


@dataclass(frozen=True)
class Transition:
    outcome: Literal["frozen", "unchanged", "finished"]
    status: str  # the status before freezing / the final status / the unchanged status


def freeze(
    job_id: str,
    model: str,
    target: JobStatus,
    finalize_as: JobStatus,
    now: float,
    *,
    only_if_expired: bool = False,
) -> Call[Transition]:
    """Move an in_progress job to `target` (finalizing or cancelling) and queue its finalize."""
    if target not in states.FROZEN:
        raise ValueError(f"{target} is not a frozen status")
    return Call(
        "freeze",
        [keys.job(job_id), keys.FINALIZE_STREAM, keys.PROGRESS],
        [
            job_id,
            states.csv(states.sources_of(target)),
            target.value,
            finalize_as.value,
            repr(now),
            "1" if only_if_expired else "",
        ],
        lambda reply: Transition(*_pair(reply)),  # type: ignore[arg-type]
    )


def cancel(job_id: str, model: str, now: float) -> Call[Transition]:
    return freeze(job_id, model, JobStatus.CANCELLING, JobStatus.CANCELLED, now)


def expire(job_id: str, model: str, now: float) -> Call[Transition]:
    """Freeze a job whose completion window is over (checked inside the script)."""
    return freeze(job_id, model, JobStatus.FINALIZING, JobStatus.EXPIRED, now, only_if_expired=True)


def finish(
    record: JobRecord,
    final: JobStatus,
    now: float,
    retention_s: int,
    *,
    error: str | None = None,
    message_id: str = "",
    dead_letter_reason: str | None = None,
) -> Call[Transition]:
    """The terminal transition of a frozen job (also acknowledges its finalize message)."""
    if final not in states.TERMINAL:
        raise ValueError(f"{final} is not terminal")
    return Call(
        "finish",
        [
            keys.job(record.id),
            keys.tenant_queued(record.tenant),
            keys.tenant_active(record.tenant),
            keys.ACTIVE_JOBS,
            keys.file_jobs(record.input_file_id or ""),
            keys.job_done(record.id),
            keys.job_shards(record.id),
            keys.STATS,
            keys.JOB_SECONDS,
            keys.FINALIZE_STREAM,
            keys.dead(record.model),
            keys.PROGRESS,
        ],
        [
            record.id,
            states.csv(states.sources_of(final)),
            final.value,
            repr(now),
            str(max(0, retention_s)),
            (error or "")[:2000],
            message_id,
            keys.GROUP,
            (dead_letter_reason or "")[:1000],
            ",".join(str(b) for b in keys.JOB_SECONDS_BUCKETS),
        ],
        lambda reply: Transition(*_pair(reply)),  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------------ queue


def release(stream: str, message_ids: Sequence[str], *, spend: bool = False) -> Call[int]:
    """Give messages back to their stream (a model's or the finalize stream) without spending a
    delivery (`spend`: this delivery counts, as when a worker dies holding them)."""
    return Call("release", [stream], [keys.GROUP, "1" if spend else "0", *message_ids], int)


def requeue(job_id: str, model: str, shards: Sequence[int], finalize: bool) -> Call[int]:
    """Re-add lost messages of a job (the reconciler's repair; the script re-checks each)."""
    what = [str(s) for s in shards] + (["finalize"] if finalize else [])
    return Call(
        "requeue",
        [
            keys.job(job_id),
            keys.stream(model),
            keys.job_shards(job_id),
            keys.job_done(job_id),
            keys.FINALIZE_STREAM,
        ],
        [job_id, *what],
        int,
    )


# ------------------------------------------------------------------------------------ deletion


def delete_job(job_id: str, tenant: str) -> Call[tuple[str, str]]:
    return Call(
        "delete_job",
        [
            keys.job(job_id),
            keys.job_done(job_id),
            keys.job_shards(job_id),
            keys.tenant_jobs(tenant),
        ],
        [job_id, states.csv(sorted(states.TERMINAL, key=str))],
        _pair,
    )


def delete_file(file_id: str) -> Call[tuple[str, str]]:
    return Call("delete_file", [keys.file(file_id), keys.file_jobs(file_id)], [], _pair)
