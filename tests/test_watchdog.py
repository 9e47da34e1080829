"""The progress watchdog: a worker whose engine stops making progress gives its shards back and
exits (75) instead of holding them until the job's window ends. Unit cases with a fake clock,
then the real stack with an engine that hangs (tests/stall_worker.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contrail.client.cli.base import EXIT_ENGINE_STALLED
from contrail.core.jobs import keys
from contrail.testing.faults import assert_exactly_once, create_job, item_ids, job, redis_client
from contrail.testing.stack import Stack
from contrail.worker.consumer.watchdog import WatchedEngine
from contrail.worker.engine.base import DecodeRequest, DecodeResult, Engine, EngineStats
from contrail.worker.engine.progress import STEPS

DECODING = {"max_new_tokens": 16, "counterfactual_fraction": 0.5}
REPO = Path(__file__).resolve().parent.parent  # tests.stall_worker is run from the checkout


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class _Scripted(Engine):
    """Calls `during` (with the clock) inside generate, then returns nothing."""

    def __init__(self, during: Any) -> None:
        self.model_name, self.max_model_len, self.stats = "fake", 64, EngineStats()
        self.during = during

    def generate(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        self.during()
        return []


def test_only_time_inside_a_call_without_steps_counts() -> None:
    clock = _Clock()
    seen: list[float] = []

    def during() -> None:
        clock.t += 50
        seen.append(watched.stalled_for())  # 50 s in, no step
        STEPS.tick()
        seen.append(watched.stalled_for())  # a step: progress now
        clock.t += 5
        seen.append(watched.stalled_for())

    watched = WatchedEngine(_Scripted(during), clock=clock)
    clock.t += 1000  # idle between waves: never a stall
    assert watched.stalled_for() == 0.0
    watched.generate([])
    assert seen == [50.0, 0.0, 5.0]
    clock.t += 1000
    assert watched.stalled_for() == 0.0  # the call ended


def test_a_hung_engine_gives_its_shards_back_and_exits(make_stack: Any) -> None:
    stack: Stack = make_stack(CONTRAIL_BATCH_SHARDS="8", PYTHONPATH=str(REPO))
    n = 32  # 4 shards of 8, all in the hung worker's first wave
    staller = stack.worker(
        module="tests.stall_worker", CONTRAIL_TEST_STALL="1", CONTRAIL_ENGINE_STALL_S="3"
    )
    job_id = create_job(stack, n, DECODING)
    assert staller.wait(120) == EXIT_ENGINE_STALLED, staller.log()[-3000:]
    log = staller.log()
    assert "stall_worker: the engine hangs now" in log
    assert "engine stalled: no decoding step for" in log and "giving back 4 message(s)" in log
    # The fault hit work in progress: nothing was counted, and every shard is back in the
    # queue at once (not after claim_idle_ms), its delivery spent.
    assert job(stack, job_id)["request_counts"]["completed"] == 0
    waiting: Any = redis_client(stack).xrange(keys.stream("tiny"))
    assert len(waiting) == 4 and {f["prior_deliveries"] for _, f in waiting} == {"1"}
    healthy = stack.worker()
    final = stack.wait_status(job_id, ("completed", "failed"), timeout=240)
    assert final["status"] == "completed", final
    assert_exactly_once(stack, job_id, item_ids(n), DECODING, final)
    assert "on delivery 2" in healthy.log()  # decoded as a redelivery, item by item
