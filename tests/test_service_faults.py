"""Failures on real servers: a worker killed mid-shard, Redis restarted mid-job (AOF), cancel,
a shard that keeps failing (dead-letter), graceful SIGTERM."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import redis

from contrail.core.jobs import keys
from tests.service_fixtures import Stack, items_jsonl, read_jsonl

SLOW = {"max_new_tokens": 48, "counterfactual_fraction": 0.25}


def create(stack: Stack, n: int, decoding: dict[str, Any] = SLOW) -> str:
    r = stack.upload(items_jsonl(n))
    assert r.status_code == 201, r.text
    with stack.client() as c:
        r = c.post(
            "/v1/jobs",
            json={"input_file_id": r.json()["id"], "model": "tiny", "decoding": decoding},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def wait_progress(stack: Stack, job_id: str, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with stack.client() as c:
        while time.monotonic() < deadline:
            if c.get(f"/v1/jobs/{job_id}").json()["request_counts"]["completed"] >= at_least:
                return
            time.sleep(0.1)
    raise AssertionError("no progress")


def dataset_pairs(stack: Stack, job_id: str) -> list[tuple[str, str]]:
    data = stack.storage().get(f"jobs/{job_id}/dataset.jsonl")
    return [(r["item_id"], r["tag"]) for r in read_jsonl(data)]


def assert_exactly_once(stack: Stack, job_id: str, n: int, job: dict[str, Any]) -> None:
    pairs = dataset_pairs(stack, job_id)
    dupes = [p for p, k in Counter(pairs).items() if k > 1]
    assert not dupes, f"duplicated: {dupes[:5]}"
    assert {p[0] for p in pairs if p[1] == "factual"} == {f"q{i:06d}" for i in range(n)}
    assert job["request_counts"]["completed"] == len(pairs)
    assert job["request_counts"]["failed"] == 0
    assert job["request_counts"]["total"] == len(pairs)


def test_worker_kill9_mid_shard(stack: Stack) -> None:
    n = 96
    w1 = stack.worker(CONTRAIL_BATCH_SHARDS="2")
    w2 = stack.worker(CONTRAIL_BATCH_SHARDS="2", wait=False)
    job_id = create(stack, n)
    r = redis.Redis.from_url(stack.valkey.url, decode_responses=True)
    wait_progress(stack, job_id, 8)
    # kill the first worker while it holds shards (its heartbeat reports them)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pending = r.xpending_range(keys.stream("tiny"), keys.GROUP, "-", "+", 100)
        mine = [
            p
            for p in pending
            if p["consumer"].endswith(f"-{w1.pid}-") or str(w1.pid) in p["consumer"]
        ]
        if mine:
            break
        time.sleep(0.05)
    assert mine, "worker 1 never held a shard"
    w1.kill9()
    job = stack.wait_status(job_id, ("completed", "failed"), timeout=300)
    assert job["status"] == "completed", job
    assert_exactly_once(stack, job_id, n, job)
    assert "reclaimed" in w2.log()
    assert int(r.hget(keys.STATS, "shards_done") or 0) >= 12


def test_redis_restart_with_aof_mid_job(make_stack: Any) -> None:
    stack: Stack = make_stack(aof=True)
    n = 64
    stack.worker()
    job_id = create(stack, n)
    wait_progress(stack, job_id, 8)
    stack.valkey.restart(down_s=1.0)
    job = stack.wait_status(job_id, ("completed", "failed"), timeout=300)
    assert job["status"] == "completed", job
    assert_exactly_once(stack, job_id, n, job)


def test_cancel_mid_job(stack: Stack) -> None:
    n = 160
    stack.worker(CONTRAIL_BATCH_SHARDS="1")
    job_id = create(stack, n)
    wait_progress(stack, job_id, 8)
    with stack.client() as c:
        r = c.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 200
        assert r.json()["status"] in ("cancelling", "cancelled")
        job = stack.wait_status(job_id, ("cancelled",), timeout=120)
        done = job["request_counts"]["completed"]
        assert 0 < done < job["request_counts"]["total"]
        assert job["cancelled_at"] and job["cancelling_at"]
        results = read_jsonl(c.get(f"/v1/jobs/{job_id}/results").content)
        assert len(results) == done
        loc = c.get(f"/v1/jobs/{job_id}/dataset").json()
        assert loc["jsonl_url"] is not None
        # cancelling again changes nothing
        assert c.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    pairs = dataset_pairs(stack, job_id)
    assert len(pairs) == len(set(pairs)) == done


def test_poison_shard_is_dead_lettered(make_stack: Any) -> None:
    stack: Stack = make_stack(CONTRAIL_CLAIM_IDLE_MS="500", CONTRAIL_MAX_DELIVERIES="2")
    n = 24
    r = stack.upload(items_jsonl(n))
    file_id = r.json()["id"]
    # break the second shard's input: it fails on every delivery
    stack.storage().put(f"files/{file_id}/part-000001.jsonl", b"{not json\n")
    stack.worker()
    with stack.client() as c:
        job_id = c.post(
            "/v1/jobs",
            json={"input_file_id": file_id, "model": "tiny", "decoding": {"max_new_tokens": 4}},
        ).json()["id"]
        job = stack.wait_status(job_id, ("completed", "failed"), timeout=120)
        assert job["status"] == "completed"
        assert job["request_counts"]["completed"] == 16
        assert job["request_counts"]["failed"] == 8
        errors = read_jsonl(c.get(f"/v1/jobs/{job_id}/errors").content)
        assert len(errors) == 8 and all("shard 1 failed" in e["message"] for e in errors)
    rr = redis.Redis.from_url(stack.valkey.url, decode_responses=True)
    dead = rr.xrange(keys.dead("tiny"))
    assert len(dead) == 1 and dead[0][1]["shard"] == "1"


def test_sigterm_finishes_wave_and_burst_mode(stack: Stack) -> None:
    n = 32
    w = stack.worker()
    job_id = create(stack, n, {"max_new_tokens": 16})
    wait_progress(stack, job_id, 1)
    assert w.stop(timeout=60) == 0  # graceful: finishes the wave in hand
    rr = redis.Redis.from_url(stack.valkey.url, decode_responses=True)
    assert rr.xpending(keys.stream("tiny"), keys.GROUP)["pending"] == 0
    burst = stack.worker(burst=True, wait=False)
    assert burst.wait(180) == 0
    job = stack.wait_status(job_id, ("completed",), timeout=10)
    assert_exactly_once(stack, job_id, n, job)
