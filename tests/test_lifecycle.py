"""The job lifecycle on the real stack: atomic creation with an exact total, cancellation,
expiry, retention, deletion, resubmission, and the protocol's guarantees checked from outside
(counted once, written once, finalized idempotently, trimmed queues)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from contrail.core.jobs import keys
from contrail.core.jobs.queue import JobQueue, QueueMessage
from contrail.core.jobs.reconciler import Reconciler
from contrail.testing.faults import (
    assert_exactly_once,
    create_job,
    expected_pairs,
    item_ids,
    job,
    redis_client,
    shards_of,
    stats,
    stored,
    wait_progress,
)
from contrail.testing.stack import Stack, announce_worker, items_jsonl, read_jsonl
from contrail.worker.consumer.finalize import Finalizer
from contrail.worker.consumer.loop import Worker
from contrail.worker.consumer.shards import ShardProcessor
from contrail.worker.engine.base import DecodeRequest, DecodeResult, Engine
from tests.service_fixtures import worker_settings

DECODING = {"max_new_tokens": 16, "counterfactual_fraction": 0.5}


# ------------------------------------------------------------------------------ creation


def test_creation_queues_every_shard_with_an_exact_total(stack: Stack) -> None:
    announce_worker(stack)  # accepted, but nothing decodes yet
    n = 100
    job_id = create_job(stack, n, DECODING)
    created = job(stack, job_id)
    assert created["status"] == "in_progress" and created["in_progress_at"]
    assert created["request_counts"]["total"] == len(expected_pairs(item_ids(n), DECODING))
    r = redis_client(stack)
    assert r.xlen(keys.stream("tiny")) == shards_of(n, 8)  # record and shards together
    # the total holds through the whole run
    stack.worker(wait=False)
    totals = set()
    while (now := job(stack, job_id))["status"] != "completed":
        totals.add(now["request_counts"]["total"])
        time.sleep(0.05)
    assert totals == {created["request_counts"]["total"]}
    assert_exactly_once(stack, job_id, item_ids(n), DECODING, now)
    assert r.xlen(keys.stream("tiny")) == 0  # every message deleted once acknowledged
    assert r.xpending(keys.stream("tiny"), keys.GROUP)["pending"] == 0


def test_inline_items_total_counts_failed_plans_per_rationale(stack: Stack) -> None:
    stack.worker()
    items = [
        {"id": "ok", "question": "Is ice cold?", "answer": "yes", "choices": ["yes", "no"]},
        # free-form, no wrong answers: neither its factual (wrong perturbation) nor its
        # counterfactual rationale can be planned; each counts as one failure
        {"id": "bare", "question": "Name a colour.", "answer": "red"},
    ]
    decoding = {"max_new_tokens": 8, "counterfactual_fraction": 1.0}
    with stack.client() as c:
        r = c.post("/v1/jobs", json={"items": items, "model": "tiny", "decoding": decoding})
        assert r.status_code == 201, r.text
        assert r.json()["request_counts"]["total"] == 4
        final = stack.wait_status(r.json()["id"], ("completed",))
    assert final["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    _, errors = stored(stack, final["id"])
    assert sorted((e["item_id"], e["tag"]) for e in errors) == [
        ("bare", "counterfactual"),
        ("bare", "factual"),
    ]


def test_orphaned_inline_input_is_removed_by_the_reconciler(stack: Stack) -> None:
    # An API that dies between writing a job's inline input and the atomic creation leaves an
    # outbox entry and the input, but no record: the reconciler removes both.
    r = redis_client(stack)
    storage = stack.storage()
    storage.put("jobs/job_orphan/input/part-000000.jsonl", items_jsonl(3))
    r.zadd(keys.PENDING_INPUTS, {"job_orphan": time.time() - 7200})
    reconciler = Reconciler(r, storage, owner="test", stall_s=5)
    report = reconciler.run_once()
    assert report.led and report.orphan_inputs_removed == ["job_orphan"]
    assert storage.list_keys("jobs/job_orphan/") == []
    assert r.zcard(keys.PENDING_INPUTS) == 0


# ------------------------------------------------------------------------------ lifecycle


def test_cancel_freezes_the_counted_shards(stack: Stack) -> None:
    n = 160
    stack.worker(CONTRAIL_BATCH_SHARDS="1")
    job_id = create_job(stack, n, {"max_new_tokens": 32})
    wait_progress(stack, job_id, 8)
    with stack.client() as c:
        assert c.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelling"
        final = stack.wait_status(job_id, ("cancelled",), timeout=120)
        counts = final["request_counts"]
        assert counts["total"] == n and 0 < counts["completed"] < n
        assert final["cancelled_at"] and final["cancelling_at"]
        results = read_jsonl(c.get(f"/v1/jobs/{job_id}/results").content)
        assert len(results) == counts["completed"]
        assert c.get(f"/v1/jobs/{job_id}/dataset").json()["jsonl_url"] is not None
        assert c.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    pairs, _ = stored(stack, job_id)
    assert len(pairs) == len(set(pairs)) == counts["completed"]
    assert redis_client(stack).xlen(keys.stream("tiny")) == 0  # its other shards dropped


def test_expired_job_keeps_its_finished_rationales(stack: Stack) -> None:
    n = 400
    stack.worker(CONTRAIL_BATCH_SHARDS="1")
    job_id = create_job(stack, n, {"max_new_tokens": 48}, completion_window="90m")
    created = job(stack, job_id)
    assert created["expires_at"] - created["created_at"] == 90 * 60
    wait_progress(stack, job_id, 8)
    # Bring the deadline to now rather than racing a short window against the machine's speed:
    # what is under test is what the reconciler does once the window is over.
    # (the record and the reconciler's expiry index, jobs:active, say the same)
    now = time.time()
    redis_client(stack).hset(keys.job(job_id), "expires_at", str(now))
    redis_client(stack).zadd(keys.ACTIVE_JOBS, {job_id: now})
    final = stack.wait_status(job_id, ("expired", "completed"), timeout=120)
    assert final["status"] == "expired" and final["expired_at"], final
    counts = final["request_counts"]
    assert 0 < counts["completed"] < counts["total"] == n
    pairs, _ = stored(stack, job_id)
    assert len(pairs) == len(set(pairs)) == counts["completed"]
    assert stats(stack)["jobs_expired"] == 1


def test_retention_expires_finished_jobs_records(make_stack: Any) -> None:
    stack: Stack = make_stack(CONTRAIL_JOB_RETENTION_S="3")
    stack.worker()
    job_id = create_job(stack, 8, {"max_new_tokens": 4})
    stack.wait_status(job_id, ("completed",))
    assert 0 < redis_client(stack).ttl(keys.job(job_id)) <= 3
    time.sleep(4)
    with stack.client() as c:
        assert c.get(f"/v1/jobs/{job_id}").status_code == 404
        assert c.get("/v1/jobs").json()["data"] == []  # dropped from the listing too
    assert not redis_client(stack).zcard(keys.tenant_jobs("alpha"))
    assert stack.storage().exists(f"jobs/{job_id}/dataset.jsonl")  # data stays until DELETE


def test_delete_jobs_and_files(stack: Stack) -> None:
    announce_worker(stack)
    running = create_job(stack, 16, {"max_new_tokens": 4})
    with stack.client() as c:
        r = c.delete(f"/v1/jobs/{running}")
        assert r.status_code == 409 and "cancel it first" in r.json()["error"]["message"]
        file_id = job(stack, running)["input_file_id"]
        assert c.delete(f"/v1/files/{file_id}").status_code == 409  # a running job reads it
    stack.worker()
    stack.wait_status(running, ("completed",))
    storage = stack.storage()
    assert storage.list_keys(f"jobs/{running}/")
    with stack.client() as c:
        r = c.delete(f"/v1/jobs/{running}")
        assert r.status_code == 200, r.text
        assert r.json() == {"id": running, "object": "job.deleted", "deleted": True}
        assert c.get(f"/v1/jobs/{running}").status_code == 404
        assert c.delete(f"/v1/jobs/{running}").status_code == 404
        r = c.delete(f"/v1/files/{file_id}")
        assert r.status_code == 200 and r.json()["object"] == "file.deleted"
        assert c.get(f"/v1/files/{file_id}").status_code == 404
        again = c.post("/v1/jobs", json={"input_file_id": file_id, "model": "tiny"})
        assert again.status_code == 404
    assert storage.list_keys(f"jobs/{running}/") == []
    assert storage.list_keys(f"files/{file_id}/") == []


def test_resubmit_takes_only_unfinished_items(stack: Stack) -> None:
    n = 160
    decoding = {"max_new_tokens": 24, "counterfactual_fraction": 0.25}
    stack.worker(CONTRAIL_BATCH_SHARDS="1")
    job_id = create_job(stack, n, decoding)
    wait_progress(stack, job_id, 16)
    with stack.client() as c:
        assert c.post(f"/v1/jobs/{job_id}/resubmit").status_code == 409  # still running
        c.post(f"/v1/jobs/{job_id}/cancel")
        first = stack.wait_status(job_id, ("cancelled",))
        r = c.post(f"/v1/jobs/{job_id}/resubmit")
        assert r.status_code == 201, r.text
        second = r.json()
        assert second["metadata"] == {"resubmitted_from": job_id}
        done = {i for i, _ in stored(stack, job_id)[0]}
        assert second["request_counts"]["total"] == len(
            expected_pairs([i for i in item_ids(n) if i not in done], decoding)
        )
        final = stack.wait_status(second["id"], ("completed",), timeout=300)
    both = stored(stack, job_id)[0] + stored(stack, second["id"])[0]
    assert sorted(both) == sorted(expected_pairs(item_ids(n), decoding))
    assert first["request_counts"]["completed"] + final["request_counts"]["completed"] == len(both)


# ------------------------------------------------------------------------------ in-process


class ScriptedEngine(Engine):
    """The real tiny engine, plus a record of its calls and a poison: a wave holding a request
    of the poisoned item raises, like an engine hitting a bad input."""

    def __init__(self, inner: Engine, poison: str | None = None) -> None:
        self.inner = inner
        self.poison = poison
        self.model_name = inner.model_name
        self.max_model_len = inner.max_model_len
        self.stats = inner.stats
        self.calls: list[list[str]] = []

    def generate(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        self.calls.append([r.request_id for r in requests])
        if self.poison and any(f"/{self.poison}#" in r.request_id for r in requests):
            raise RuntimeError(f"engine choked on {self.poison} at /secret/path")
        return self.inner.generate(requests)


def _worker(stack: Stack, engine: Engine, **overrides: Any) -> Worker:
    settings = worker_settings(stack, **overrides)
    return Worker(settings, engine=engine, burst=True, worker_id=f"test-{time.monotonic_ns()}")


def test_an_item_the_engine_fails_on_fails_alone(stack: Stack, tiny_engine: Engine) -> None:
    announce_worker(stack)
    n = 32  # 4 shards of 8, all in one wave; q000009 sits in shard 1
    job_id = create_job(stack, n, DECODING)
    engine = ScriptedEngine(tiny_engine, poison="q000009")
    _worker(stack, engine, batch_shards=4, claim_idle_ms=300, max_deliveries=2).run()
    final = stack.wait_status(job_id, ("completed", "failed"), timeout=60)  # the finalizer's
    assert final["status"] == "completed", final
    pairs, errors = stored(stack, job_id)
    # The wave is split until shard 1 fails alone; its redelivery is decoded item by item, and
    # only the item the engine fails on is an error: its shard-mates complete.
    poisoned = expected_pairs(["q000009"], DECODING)
    assert {(e["item_id"], e["tag"]) for e in errors} == poisoned
    assert all(e["code"] == "engine_error" for e in errors)
    assert not any("secret" in e["message"] or "RuntimeError" in e["message"] for e in errors)
    assert set(pairs) == expected_pairs(item_ids(n), DECODING) - poisoned
    assert redis_client(stack).xrange(keys.dead("tiny")) == []  # nothing had to be given up
    assert_exactly_once(stack, job_id, item_ids(n), DECODING, final)


def test_giving_messages_back_clears_their_poison_marks(stack: Stack, tiny_engine: Engine) -> None:
    """A worker that gives its shards back on purpose (SIGTERM past the grace period) was not
    stopped by the item it was decoding: the next delivery must not set that item aside."""
    from contrail.worker.consumer.poison import PoisonLedger

    announce_worker(stack)
    job_id = create_job(stack, 8, DECODING)
    worker = _worker(stack, ScriptedEngine(tiny_engine), batch_shards=1)
    worker.startup()
    try:
        (msg,) = worker.fetch()
        ledger = PoisonLedger(worker.redis, job_id, msg.shard)
        ledger.in_flight("q000003")  # as if the worker were decoding it alone when told to stop
        worker.release()
        assert ledger.settle() == set()
    finally:
        worker.shutdown()


def test_counted_shard_is_never_decoded_or_rewritten_again(
    stack: Stack, tiny_engine: Engine
) -> None:
    announce_worker(stack)
    job_id = create_job(stack, 24, DECODING)  # 3 shards
    engine = ScriptedEngine(tiny_engine)
    worker = _worker(stack, engine, batch_shards=1)
    worker.startup()
    try:
        worker.process(worker.fetch())  # shard 0 decoded and counted
        r = redis_client(stack)
        counted = dict(r.hgetall(keys.job_done(job_id)))
        assert list(counted) == ["0"]
        storage = stack.storage()
        before = {k: storage.get(k) for k in storage.list_keys(f"jobs/{job_id}/shards/")}
        # a redelivery of shard 0 (a worker that died before acknowledging, say)
        calls = len(engine.calls)
        owed = len(expected_pairs(item_ids(8), DECODING))
        fields = {"kind": "shard", "job_id": job_id, "shard": "0", "items": "8"}
        mid = r.xadd(keys.stream("tiny"), {**fields, "rationales": str(owed)})
        redelivered = QueueMessage(mid, "shard", job_id, 0, 8, owed)
        shards = ShardProcessor(
            worker.queue,
            worker.storage,
            engine,
            worker.guard,
            model="tiny",
            max_deliveries=3,
            done_with=lambda m: None,
        )
        assert shards.prepare(redelivered) is None
        assert all(f"{job_id}/0/" not in rid for call in engine.calls[calls:] for rid in call)
        assert stats(stack)["shards_skipped"] == 1
        assert not r.xrange(keys.stream("tiny"), mid, mid)  # acknowledged and deleted
        # dead-lettering it now leaves the counted records alone
        again = QueueMessage(redelivered.id, "shard", job_id, 0, 8, owed, deliveries=9)
        shards.dead_letter(again, worker.queue.job(job_id), "test")
        assert dict(r.hgetall(keys.job_done(job_id)))["0"] == counted["0"]
        after = {k: storage.get(k) for k in storage.list_keys(f"jobs/{job_id}/shards/000000/")}
        assert after == {k: v for k, v in before.items() if "/000000/" in k}
    finally:
        worker.shutdown()


def test_finalize_again_is_byte_identical(make_stack: Any, tiny_engine: Engine) -> None:
    stack: Stack = make_stack(finalizer=False)  # this test finalizes by hand
    announce_worker(stack)
    job_id = create_job(stack, 24, DECODING)
    worker = _worker(stack, tiny_engine, batch_shards=8)
    worker.startup()
    try:
        while worker.queue.job(job_id).status.value == "in_progress":  # type: ignore[union-attr]
            worker.process([m for m in worker.fetch() if m.kind == "shard"])
        # the decode worker never finalizes: the finalize message is the finalizers'
        assert not [m for m in worker.queue.live_messages() if m.kind == "finalize"]
        finalizers = JobQueue.finalizers(worker.redis)
        finalizers.ensure_group()
        finals = finalizers.read("test-finalizer", 10, None)
        assert [(m.kind, m.job_id) for m in finals] == [("finalize", job_id)]
        frozen = worker.queue.job(job_id)
        assert frozen is not None and frozen.status.value == "finalizing"
        finalizer = Finalizer(
            finalizers, worker.storage, worker.guard, max_deliveries=3, retention_s=0
        )
        storage = stack.storage()
        finalizer.merge(frozen)  # a first finalization that died before its last step
        first = {k: storage.get(k) for k in storage.list_keys(f"jobs/{job_id}/")}
        counters = redis_client(stack).hgetall(keys.job(job_id))
        finalizer.process(finals[0])  # the redelivered finalize message
        second = {k: storage.get(k) for k in storage.list_keys(f"jobs/{job_id}/")}
        assert first == second
        after = redis_client(stack).hgetall(keys.job(job_id))
        for field in ("completed", "failed", "total", "prompt_tokens", "completion_tokens"):
            assert after[field] == counters[field]
        assert after["status"] == "completed"
        finalizer.process(finals[0])  # and once more, after the terminal state: nothing moves
        assert {k: storage.get(k) for k in storage.list_keys(f"jobs/{job_id}/")} == second
        assert json.loads(second[f"jobs/{job_id}/manifest.json"])["request_counts"] == {
            "total": int(after["total"]),
            "completed": int(after["completed"]),
            "failed": int(after["failed"]),
        }
    finally:
        worker.shutdown()


def test_unreadable_shard_input_is_dead_lettered(make_stack: Any) -> None:
    stack: Stack = make_stack(CONTRAIL_CLAIM_IDLE_MS="500", CONTRAIL_MAX_DELIVERIES="2")
    n = 24
    r = stack.upload(items_jsonl(n))
    file_id = r.json()["id"]
    # the second shard's input breaks: it fails on every delivery
    stack.storage().put(f"files/{file_id}/part-000001.jsonl", b"{not json\n")
    announce_worker(stack)
    with stack.client() as c:
        body = {"input_file_id": file_id, "model": "tiny", "decoding": {"max_new_tokens": 4}}
        job_id = c.post("/v1/jobs", json=body).json()["id"]
        burst = stack.worker(burst=True, wait=False)  # drains the queue, then exits
        assert burst.wait(180) == 0
        final = stack.wait_status(job_id, ("completed", "failed"), timeout=120)
        assert final["status"] == "completed"
        assert final["request_counts"] == {"total": 24, "completed": 16, "failed": 8}
        errors = read_jsonl(c.get(f"/v1/jobs/{job_id}/errors").content)
        assert len(errors) == 8 and all("could not be processed" in e["message"] for e in errors)
    dead = redis_client(stack).xrange(keys.dead("tiny"))
    assert len(dead) == 1 and dead[0][1]["shard"] == "1"
