"""A bounded chaos run (about two minutes of faults): several workers, repeated kill -9, a
Redis kill -9 restart, an S3 outage and an API kill -9 during job creation. Nothing may be lost
or duplicated, no finished decode repeated, every job must complete. bench/chaos.py runs the
long version."""

from __future__ import annotations

from typing import Any

import pytest

from contrail.testing.chaos import Chaos, ChaosPlan
from contrail.testing.servers import SeaweedS3
from contrail.testing.stack import Stack

pytestmark = pytest.mark.slow


def test_chaos(make_stack: Any, own_s3: SeaweedS3) -> None:
    stack: Stack = make_stack(
        aof=True,
        s3=own_s3,
        CONTRAIL_CLAIM_IDLE_MS="2000",
        CONTRAIL_HEARTBEAT_INTERVAL_S="0.3",
    )
    plan = ChaosPlan(workers=3, jobs=4, late_jobs=2, worker_kills=4, interval_s=5.0)
    report = Chaos(stack, own_s3, plan).run(timeout_s=400)
    summary = report.as_dict()
    assert report.statuses == {"completed": report.jobs}, summary
    assert report.jobs == plan.jobs + plan.late_jobs * plan.api_kills + report.top_ups
    # every fault began while work remained (the run fails loudly otherwise)
    faults = plan.worker_kills + plan.redis_crashes + plan.s3_outages + plan.api_kills
    assert len(report.progress_at_fault_starts) == faults, summary
    assert all(p < 1.0 for p in report.progress_at_fault_starts), summary
    # every worker kill hit a worker holding work (the harness waits for one, or fails)
    assert len(report.held_at_worker_kills) == plan.worker_kills, summary
    assert all(n > 0 for n in report.held_at_worker_kills), summary
    assert report.jobs_listed == report.jobs, summary  # no creation doubled by the API crash
    assert report.lost == 0 and report.duplicated == 0, summary
    assert report.twice_decoded == 0, summary
    # from storage: one attempt file per shard, and those of workers killed before their
    # attempt was counted (never more than the kills)
    assert report.attempt_files - report.extra_attempt_files == report.shards_owed, summary
    assert report.extra_attempt_files <= plan.worker_kills, summary
    assert report.dead_lettered == 0 and report.item_errors == 0, summary
    # A kill that lands on a redelivered shard's isolated item sets that item aside (the
    # poison-item rule); never more items than kills.
    assert report.set_aside_items <= plan.worker_kills, summary
    assert report.shards_counted == report.shards_owed, summary
    assert report.rationales_stored + report.set_aside == report.rationales_owed, summary
