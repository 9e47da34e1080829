"""Faults of the stores the service depends on, on real servers: Redis crashed (kill -9) mid-job
with AOF and, as a control, without; Redis down for 70 s mid-wave; S3 (SeaweedFS) down for 70 s;
the worker's scratch disk full while finalizing. Every job must end in a terminal state
with nothing lost or duplicated, and the workers keep their process (and loaded engine)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from contrail.core.jobs import keys
from contrail.testing.faults import (
    assert_exactly_once,
    create_job,
    item_ids,
    job,
    redis_client,
    shards_of,
    stats,
    wait_progress,
)
from contrail.testing.servers import SeaweedS3
from contrail.testing.stack import Stack
from contrail.worker.generation.item_errors import FINALIZE_FAILED

pytestmark = pytest.mark.slow

DECODING = {"max_new_tokens": 32, "counterfactual_fraction": 0.25}
# Each outage outlasts the minute of retries the workers used to give up after, and every
# client library's own short retries; the bench/chaos.py runs hold longer ones (90 s, 2 minutes).
REDIS_OUTAGE_S = 70
S3_OUTAGE_S = 70


def _mid_flight(stack: Stack, job_id: str) -> dict[str, Any]:
    """The job, asserted to be running with some but not all rationales done."""
    wait_progress(stack, job_id, 8)
    now = job(stack, job_id)
    counts = now["request_counts"]
    assert now["status"] == "in_progress", now
    assert 0 < counts["completed"] < counts["total"], counts
    return now


def test_redis_kill9_mid_job_with_aof(make_stack: Any) -> None:
    stack: Stack = make_stack(aof=True)
    n = 96
    w = stack.worker(CONTRAIL_BATCH_SHARDS="2")
    job_id = create_job(stack, n, DECODING)
    _mid_flight(stack, job_id)
    stack.valkey.restart(down_s=2.0, crash=True)
    final = stack.wait_status(job_id, ("completed", "failed"), timeout=300)
    assert final["status"] == "completed", final
    assert_exactly_once(stack, job_id, item_ids(n), DECODING, final)
    assert stats(stack)["shards_done"] == shards_of(n, 8)
    assert w.proc is not None and w.proc.poll() is None  # rode it out, same process


def test_redis_kill9_without_aof_loses_the_queue_control(make_stack: Any) -> None:
    # The control for the test above: what a crash costs without AOF.
    stack: Stack = make_stack(aof=False)
    n = 96
    stack.worker(CONTRAIL_BATCH_SHARDS="2")
    job_id = create_job(stack, n, DECODING)
    _mid_flight(stack, job_id)
    stack.valkey.restart(down_s=1.0, crash=True)
    time.sleep(3)
    with stack.client() as c:
        assert c.get(f"/v1/jobs/{job_id}").status_code == 404  # the record is gone
        assert c.get("/v1/jobs").json()["data"] == []
    r = redis_client(stack)
    assert not r.exists(keys.stream("tiny")) or r.xlen(keys.stream("tiny")) == 0
    # what the workers had written is still in storage, but no job will ever merge it
    assert stack.storage().list_keys(f"jobs/{job_id}/shards/")
    assert not stack.storage().exists(f"jobs/{job_id}/dataset.jsonl")


def test_redis_down_70s_mid_wave(make_stack: Any) -> None:
    stack: Stack = make_stack(aof=True)
    n = 64
    w1 = stack.worker(CONTRAIL_BATCH_SHARDS="2")
    w2 = stack.worker(CONTRAIL_BATCH_SHARDS="2", wait=False)
    job_id = create_job(stack, n, DECODING)
    _mid_flight(stack, job_id)
    stack.valkey.restart(down_s=REDIS_OUTAGE_S, crash=True)
    final = stack.wait_status(job_id, ("completed", "failed"), timeout=300)
    assert final["status"] == "completed", final
    assert_exactly_once(stack, job_id, item_ids(n), DECODING, final)
    counters = stats(stack)
    assert counters["shards_done"] == shards_of(n, 8)
    assert counters.get("shards_duplicate", 0) == 0  # nothing reclaimed from a live worker
    for w in (w1, w2):
        assert w.proc is not None and w.proc.poll() is None
        deadline = time.monotonic() + 15  # an idle worker may still be in its retry back-off
        while "redis back after" not in w.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "redis back after" in w.log()


def test_s3_down_70s(make_stack: Any, own_s3: SeaweedS3) -> None:
    stack: Stack = make_stack(s3=own_s3)
    n = 64
    w = stack.worker(CONTRAIL_BATCH_SHARDS="2")
    job_id = create_job(stack, n, DECODING)
    _mid_flight(stack, job_id)
    own_s3.stop()
    time.sleep(S3_OUTAGE_S)
    own_s3.start()
    final = stack.wait_status(job_id, ("completed", "failed"), timeout=600)
    assert final["status"] == "completed", final
    assert final["request_counts"]["failed"] == 0
    assert_exactly_once(stack, job_id, item_ids(n), DECODING, final)
    assert stats(stack).get("shards_dead", 0) == 0
    assert w.proc is not None and w.proc.poll() is None
    log = w.log()
    assert log.count(" serves tiny ") == 1, "the worker restarted (and reloaded its engine)"
    assert "storage" in log and "retrying" in log


def _scratch_on_tiny_tmpfs(scratch: Path) -> list[str]:
    """Run the worker in its own mount namespace with a 16 KiB tmpfs as its scratch folder."""
    if shutil.which("unshare") is None:
        raise AssertionError("util-linux `unshare` is needed for this test")
    mount = f'mount -t tmpfs -o size=16k contrail-scratch {scratch} && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh"]


def test_full_scratch_disk_in_finalize_fails_the_job_cleanly(
    make_stack: Any, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    stack: Stack = make_stack(
        finalizer=False,
        CONTRAIL_SCRATCH_DIR=str(scratch),
        CONTRAIL_MAX_DELIVERIES="2",
        CONTRAIL_CLAIM_IDLE_MS="1000",
    )
    n = 64
    decoding = {"max_new_tokens": 48, "counterfactual_fraction": 0.5}
    stack.worker()
    w = stack.finalizer(prefix=_scratch_on_tiny_tmpfs(scratch))  # the scratch is the merge's
    job_id = create_job(stack, n, decoding)
    final = stack.wait_status(job_id, ("completed", "failed"), timeout=300)
    assert final["status"] == "failed", final
    # the tenant reads a fixed message; the cause is in the finalizer's log only
    assert final["error"] == FINALIZE_FAILED.format(n=2, job_id=job_id), final["error"]
    assert "No space left on device" in w.log()
    # every rationale was decoded and counted before finalization failed, and stays stored
    counts = final["request_counts"]
    assert counts["completed"] + counts["failed"] == counts["total"]
    assert len(redis_client(stack).hgetall(keys.job_done(job_id))) == shards_of(n, 8)
    assert w.proc is not None and w.proc.poll() is None
    assert stats(stack).get("jobs_failed", 0) == 1
