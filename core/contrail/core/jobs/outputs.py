"""Where a job's results are: the counted attempt of each shard while it runs, the merged
dataset once it is finalized. Readers (the API's results endpoints, the viewer, resubmission)
go through here so that only counted outputs are ever read."""

from __future__ import annotations

from collections.abc import Mapping

from contrail.core.jobs.protocol import CountedAttempt
from contrail.core.storage import shard_output_keys


def counted_keys(job_id: str, counted: Mapping[int, CountedAttempt], *, errors: bool) -> list[str]:
    """The object keys of the counted attempts, in shard order (records or errors)."""
    return [
        shard_output_keys(job_id, shard, c.attempt)[1 if errors else 0]
        for shard, c in sorted(counted.items())
        if (c.failed if errors else c.completed) > 0
    ]
