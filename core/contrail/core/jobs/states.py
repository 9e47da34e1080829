"""The job state machine, written as data.

    in_progress --last shard counted------> finalizing --merged--> completed
    in_progress --completion window over--> finalizing --merged--> expired
    in_progress --cancel------------------> cancelling --merged--> cancelled
    finalizing | cancelling --finalization gave up (max deliveries)--> failed

A job is created straight into `in_progress` together with its queued shards (one atomic script),
so `validating` never persists. Leaving `in_progress` *freezes* the job: its set of counted shards
(and so every counter and the dataset) can no longer change, and one finalize message is queued.
Finalization merges exactly the frozen shards and ends in the status fixed at freezing time
(`finalize_as`), so repeating it changes nothing.

The Lua scripts receive the allowed source statuses from `sources_of`, so this table is the one
place a transition is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from contrail.client.types import TERMINAL_STATUSES, JobStatus

S = JobStatus

TRANSITIONS: Final[Mapping[JobStatus, frozenset[JobStatus]]] = {
    S.IN_PROGRESS: frozenset({S.FINALIZING, S.CANCELLING}),
    S.FINALIZING: frozenset({S.COMPLETED, S.EXPIRED, S.FAILED}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED}),
}

# Frozen: the counted shards are fixed; a finalize message is queued or being processed.
FROZEN: Final = frozenset({S.FINALIZING, S.CANCELLING})
NON_TERMINAL: Final = frozenset({S.IN_PROGRESS, *FROZEN})
TERMINAL: Final = TERMINAL_STATUSES

# What finalization ends in, by the reason the job was frozen.
FINALIZE_AS: Final[Mapping[str, JobStatus]] = {
    "done": S.COMPLETED,
    "expired": S.EXPIRED,
    "cancelled": S.CANCELLED,
}


def sources_of(target: JobStatus) -> list[JobStatus]:
    """The statuses a job may move to `target` from."""
    return sorted((s for s, targets in TRANSITIONS.items() if target in targets), key=str)


def allowed(source: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS.get(source, frozenset())


def csv(statuses: list[JobStatus]) -> str:
    """The form the Lua scripts take a status set in."""
    return ",".join(s.value for s in statuses)
