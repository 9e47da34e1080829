"""The finalizer role on the real stack (Valkey, SeaweedFS, API, worker processes): decode workers
only count shards; a job reaches its terminal status through a finalizer alone, and a finalize
message an older release queued in a model's stream is moved to the finalizers."""

from __future__ import annotations

import time
from typing import Any

import httpx

from contrail.core.jobs import keys
from contrail.testing.faults import (
    assert_exactly_once,
    create_job,
    item_ids,
    job,
    redis_client,
    shards_of,
)
from contrail.testing.stack import METRICS_TOKEN, Stack, announce_worker
from contrail.worker.consumer.loop import Worker
from contrail.worker.engine.factory import create_engine
from tests.service_fixtures import worker_settings

DECODING = {"max_new_tokens": 16, "counterfactual_fraction": 0.5}


def _metric(stack: Stack, name: str) -> float:
    r = httpx.get(
        f"{stack.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
    )
    line = next(ln for ln in r.text.splitlines() if ln.startswith(f"{name} "))
    return float(line.split()[1])


def test_a_job_ends_through_a_finalizer_only(make_stack: Any) -> None:
    stack: Stack = make_stack(finalizer=False)
    n = 24
    decoder = stack.worker()
    job_id = create_job(stack, n, DECODING)
    r = redis_client(stack)
    deadline = time.monotonic() + 180
    while len(r.hgetall(keys.job_done(job_id))) < shards_of(n, 8):
        assert time.monotonic() < deadline, decoder.log()[-3000:]
        time.sleep(0.2)
    time.sleep(2)  # a decode worker that merged would have ended the job by now
    waiting = job(stack, job_id)
    assert waiting["status"] == "finalizing", waiting
    assert not stack.storage().list_keys(f"jobs/{job_id}/dataset")  # nothing merged
    assert [m["job_id"] for _, m in r.xrange(keys.FINALIZE_STREAM)] == [job_id]
    assert _metric(stack, "contrail_finalize_queue_depth") == 1
    assert _metric(stack, "contrail_finalizers") == 0

    finalizer = stack.finalizer()
    final = stack.wait_status(job_id, ("completed", "failed"), timeout=120)
    assert final["status"] == "completed", final
    assert_exactly_once(stack, job_id, item_ids(n), DECODING, final)
    assert f"job {job_id} completed" in finalizer.log()
    assert f"job {job_id}" not in decoder.log()  # the decode worker never touched the merge
    assert r.xlen(keys.FINALIZE_STREAM) == 0  # acknowledged and deleted
    deadline = time.monotonic() + 30
    while _metric(stack, "contrail_finalizers") != 1:  # its heartbeat, seen by the API
        assert time.monotonic() < deadline
        time.sleep(0.5)
    with stack.client() as c:
        models = c.get("/v1/models").json()["data"]
    assert {m["id"]: m["workers"] for m in models} == {"tiny": 1}  # a finalizer serves no model


def test_a_finalize_message_in_a_models_stream_is_moved(
    make_stack: Any, tiny_model_path: Any
) -> None:
    """Jobs frozen by an older release have their finalize message in the model's stream; the
    first decode worker that reads it re-queues it for the finalizers."""
    stack: Stack = make_stack(finalizer=False)
    announce_worker(stack)  # accepted, nothing decodes
    job_id = create_job(stack, 8, DECODING)
    with stack.client() as c:
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    r = redis_client(stack)
    ((mid, _),) = r.xrange(keys.FINALIZE_STREAM)
    r.xdel(keys.FINALIZE_STREAM, mid)  # as if queued before the finalize stream existed:
    r.xadd(keys.stream("tiny"), {"kind": "finalize", "job_id": job_id})
    engine = create_engine("reference", "tiny", cache_dir=tiny_model_path.parent)
    worker = Worker(worker_settings(stack), engine=engine, burst=True, worker_id="legacy")
    worker.run()  # reads the shard and the finalize message; the job is frozen: no decoding
    assert [m["kind"] for _, m in r.xrange(keys.stream("tiny"))] == []
    # (the worker's reconciler may have re-queued one as well: a second finalize of a job that
    # has ended is acknowledged without effect)
    assert {m["job_id"] for _, m in r.xrange(keys.FINALIZE_STREAM)} == {job_id}
    assert job(stack, job_id)["status"] == "cancelling"
    stack.finalizer()
    final = stack.wait_status(job_id, ("cancelled", "failed"), timeout=120)
    assert final["status"] == "cancelled", final
