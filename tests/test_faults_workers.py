"""Worker faults on the real stack: kill -9 mid-shard, SIGTERM mid-wave (the heartbeat keeps the
wave in hand through the drain; a drain that runs out of time gives the wave back without
spending a delivery), a Redis error in the heartbeat. Counts come from outside the worker:
the expected (item, tag) set from the input and the counterfactual rule, against storage."""

from __future__ import annotations

import signal
import time
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
from contrail.testing.stack import KEY_A, Stack

pytestmark = pytest.mark.slow

SLOW = {"max_new_tokens": 48, "counterfactual_fraction": 0.25}


def _held_by(stack: Stack, pid: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Pending entries of the worker with this pid (its consumer name holds the pid)."""
    r = redis_client(stack)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = r.xpending_range(keys.stream("tiny"), keys.GROUP, "-", "+", 100)
        mine = [p for p in pending if f"-{pid}-" in p["consumer"]]
        if mine:
            return mine
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} never held a shard")


def test_worker_kill9_mid_shard(stack: Stack) -> None:
    n = 96
    w1 = stack.worker(CONTRAIL_BATCH_SHARDS="2")
    w2 = stack.worker(CONTRAIL_BATCH_SHARDS="2", wait=False)
    job_id = create_job(stack, n, SLOW)
    wait_progress(stack, job_id, 8)
    _held_by(stack, w1.pid)
    w1.kill9()
    final = stack.wait_status(job_id, ("completed", "failed"), timeout=300)
    assert final["status"] == "completed", final
    assert_exactly_once(stack, job_id, item_ids(n), SLOW, final)
    counters = stats(stack)
    assert counters["shards_done"] == shards_of(n, 8)  # each shard counted exactly once
    assert counters.get("shards_duplicate", 0) == 0  # and no finished decode was repeated
    assert "reclaimed" in w2.log()
    assert redis_client(stack).xlen(keys.stream("tiny")) == 0  # acknowledged = deleted


def test_a_dead_workers_shards_are_reclaimed_one_wave_each(make_stack: Any) -> None:
    """A worker killed holding four shards: its successor reclaims them one at a time, each a
    wave of its own, so it never holds two redelivered shards (each of which a death of its own
    would charge a delivery) and every shard is delivered exactly twice."""
    stack: Stack = make_stack(CONTRAIL_CLAIM_IDLE_MS="1500", CONTRAIL_HEARTBEAT_INTERVAL_S="0.2")
    n = 32  # four shards of eight items
    w1 = stack.worker(CONTRAIL_BATCH_SHARDS="4")
    job_id = create_job(stack, n, SLOW)
    held = _held_by(stack, w1.pid)
    assert len(held) == 4, held  # the whole job in one wave, read at once
    counts = job(stack, job_id)["request_counts"]
    assert counts["completed"] < counts["total"], counts  # the kill hits work in progress
    w1.kill9()
    w2 = stack.worker(CONTRAIL_BATCH_SHARDS="4", wait=False)

    r = redis_client(stack)
    most_redelivered_in_hand = 0
    deliveries: dict[str, int] = {}
    deadline = time.monotonic() + 300
    while job(stack, job_id)["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, w2.log()[-3000:]
        pending = r.xpending_range(keys.stream("tiny"), keys.GROUP, "-", "+", 100)
        mine = [p for p in pending if f"-{w2.pid}-" in p["consumer"]]
        most_redelivered_in_hand = max(
            most_redelivered_in_hand, sum(p["times_delivered"] > 1 for p in mine)
        )
        deliveries |= {str(p["message_id"]): p["times_delivered"] for p in mine}
        time.sleep(0.05)

    final = job(stack, job_id)
    assert final["status"] == "completed", final
    assert_exactly_once(stack, job_id, item_ids(n), SLOW, final)
    assert most_redelivered_in_hand == 1
    assert sorted(deliveries.values()) == [2, 2, 2, 2], deliveries
    assert w2.log().count("reclaimed idle message") == 4
    counters = stats(stack)
    assert counters.get("shards_dead", 0) == 0 and counters.get("items_set_aside", 0) == 0


def test_sigterm_keeps_heartbeat_through_the_drain(make_stack: Any) -> None:
    # The wave outlasts the reclaim threshold: without heartbeats during the drain, the second
    # worker would reclaim the wave's shards and decode them a second time.
    stack: Stack = make_stack(CONTRAIL_CLAIM_IDLE_MS="1500", CONTRAIL_HEARTBEAT_INTERVAL_S="0.2")
    n = 64
    decoding = {"max_new_tokens": 96, "counterfactual_fraction": 0.5}
    w1 = stack.worker(CONTRAIL_BATCH_SHARDS="8")
    job_id = create_job(stack, n, decoding)
    held = _held_by(stack, w1.pid)
    w2 = stack.worker(CONTRAIL_BATCH_SHARDS="8", wait=False)
    started = time.monotonic()
    assert w1.proc is not None
    w1.proc.send_signal(signal.SIGTERM)
    assert w1.wait(120) == 0
    drain = time.monotonic() - started
    final = stack.wait_status(job_id, ("completed", "failed"), timeout=300)
    assert final["status"] == "completed", final
    assert_exactly_once(stack, job_id, item_ids(n), decoding, final)
    assert stats(stack).get("shards_duplicate", 0) == 0
    assert "reclaimed" not in w2.log(), f"drain of {drain:.1f}s lost {len(held)} shard(s)"
    assert drain > 1.5, "the wave ended before the reclaim threshold: the test proves nothing"


def test_sigterm_past_grace_gives_the_wave_back_without_spending_a_delivery(
    make_stack: Any,
) -> None:
    # max_deliveries 1: a shard whose release spent its delivery would be dead-lettered on the
    # next one, so a job that completes without failures proves the delivery was kept.
    stack: Stack = make_stack(CONTRAIL_MAX_DELIVERIES="1", CONTRAIL_SHUTDOWN_GRACE_S="0.5")
    n = 64
    decoding = {"max_new_tokens": 96}
    w1 = stack.worker(CONTRAIL_BATCH_SHARDS="8")
    job_id = create_job(stack, n, decoding)
    _held_by(stack, w1.pid)
    assert w1.proc is not None
    w1.proc.send_signal(signal.SIGTERM)
    assert w1.wait(60) == 0
    assert "giving back" in w1.log() or "gave" in w1.log()
    stack.worker(wait=False)
    final = stack.wait_status(job_id, ("completed", "failed"), timeout=300)
    assert final["status"] == "completed", final
    assert final["request_counts"]["failed"] == 0
    assert_exactly_once(stack, job_id, item_ids(n), decoding, final)
    assert stats(stack).get("shards_dead", 0) == 0


def test_redis_error_in_heartbeat_keeps_the_worker_registered(stack: Stack) -> None:
    w = stack.worker()
    r = redis_client(stack)
    # Redis refuses every write (out of memory, no eviction): heartbeats fail with an error
    # reply, not a connection error, for longer than the heartbeat TTL (5 s).
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1")
    time.sleep(7)
    r.config_set("maxmemory", "0")
    deadline = time.monotonic() + 10
    with stack.client(KEY_A) as c:
        while time.monotonic() < deadline:
            models = c.get("/v1/models").json()["data"]
            if models and models[0]["workers"] == 1:
                break
            time.sleep(0.2)
    assert [(m["id"], m["workers"]) for m in models] == [("tiny", 1)], w.log()[-2000:]
    assert w.proc is not None and w.proc.poll() is None
    assert "heartbeat failed" in w.log()
    # and it still works
    job_id = create_job(stack, 8, {"max_new_tokens": 4})
    assert stack.wait_status(job_id, ("completed",), timeout=120)["status"] == "completed"
