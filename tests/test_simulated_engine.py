"""The simulated engine (bench/scale.py's stand-in for a GPU): its wave times follow the profile
under continuous batching, its output is deterministic and bounded, it ticks the watchdog, and a
real worker process serves jobs with it through the real stack."""

from __future__ import annotations

from typing import Any

import pytest

from contrail.client.types import FinishReason
from contrail.testing.faults import assert_exactly_once, create_job, item_ids
from contrail.worker.engine.base import ContrastSettings, DecodeRequest
from contrail.worker.engine.factory import create_engine
from contrail.worker.engine.progress import STEPS
from contrail.worker.engine.simulated import H100_LLAMA3_8B, GpuProfile, SimulatedEngine

FLAT = {
    "name": "flat",
    "decode_step_s": [[1, 0.01], [4, 0.02]],
    "prefill_tokens_per_s": 1000.0,
    "prefix_cached_fraction": 0.5,
    "max_rows": 4,
}


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s

    def clock(self) -> float:
        return self.now


def _request(i: int, *, pair: bool = True, budget: int = 64, chars: int = 400) -> DecodeRequest:
    return DecodeRequest(
        f"job:q{i}:factual",
        "p" * chars,
        "n" * chars if pair else None,
        ContrastSettings(max_new_tokens=budget),
    )


def _engine(**kw: Any) -> tuple[SimulatedEngine, FakeTime]:
    t = FakeTime()
    return SimulatedEngine("sim", sleep=t.sleep, clock=t.clock, **kw), t


def test_the_profile_interpolates_and_extrapolates_step_times() -> None:
    p = GpuProfile.from_options(FLAT)
    assert p.step_s(1) == pytest.approx(0.01)
    assert p.step_s(2) == pytest.approx(0.01 + 0.01 / 3)
    assert p.step_s(4) == pytest.approx(0.02)
    assert p.step_s(7) == pytest.approx(0.03)  # past the table: the last segment's slope
    assert p.prefill_s(1000) == pytest.approx(0.5)  # half the prompt is cached
    assert GpuProfile.from_options(None) is H100_LLAMA3_8B
    for bad in ("no-such-gpu", {**FLAT, "decode_step_s": [[4, 0.1], [1, 0.2]]}):
        with pytest.raises(ValueError):
            GpuProfile.from_options(bad)


def test_one_greedy_request_takes_its_prefill_and_one_step_per_token() -> None:
    engine, _ = _engine(profile=FLAT, rationale_tokens=10)
    row = engine._row(0, _request(0, pair=False, chars=4000))
    seconds, steps = engine.schedule([row])
    assert steps == row.tokens and 5 <= row.tokens <= 15
    assert seconds == pytest.approx(0.5 + row.tokens * 0.01)  # 1000 tokens, half cached


def test_continuous_batching_caps_rows_and_refills_at_once() -> None:
    """max_rows 4: two pairs decode together; a third waits for the first to finish."""
    engine, _ = _engine(profile={**FLAT, "prefill_tokens_per_s": 1e12}, rationale_tokens=10)
    rows = [engine._row(i, _request(i)) for i in range(3)]
    a, b, c = (r.tokens for r in rows)
    seconds, steps = engine.schedule(rows)
    first = min(a, b)
    # both pairs (4 rows) until the shorter ends, then the third joins it (4 rows again)
    assert steps == max(max(a, b), first + c)
    assert seconds > first * 0.02 and seconds <= steps * 0.02 + 1e-9
    # one pair alone decodes at the 2-row step time
    alone, _ = engine.schedule(rows[:1])
    assert alone == pytest.approx(a * GpuProfile.from_options(FLAT).step_s(2))


def test_results_are_deterministic_bounded_and_tick_the_watchdog() -> None:
    engine, t = _engine(rationale_tokens=48)
    requests = [_request(i, budget=40) for i in range(20)] + [_request(99, budget=0)]
    steps_before = STEPS.steps
    first = engine.generate(requests)
    again = engine.generate(requests)
    assert [r.text for r in first] == [r.text for r in again]
    assert [r.request_id for r in first] == [r.request_id for r in requests]
    for r in first[:-1]:
        assert 1 <= r.completion_tokens <= 40 and len(r.text.split()) == r.completion_tokens
        want = FinishReason.LENGTH if r.completion_tokens == 40 else FinishReason.STOP
        assert r.finish_reason == want and r.prompt_tokens == 200
    assert first[-1].completion_tokens == 0 and first[-1].finish_reason == FinishReason.LENGTH
    assert len({r.completion_tokens for r in first}) > 5  # lengths vary by request id
    simulated = engine.simulated_seconds
    assert sum(t.slept) == pytest.approx(simulated) and max(t.slept) <= 0.25
    assert STEPS.steps - steps_before >= len(t.slept)
    assert engine.stats.waves == 2 and engine.stats.requests == 42


def test_the_factory_builds_it_without_a_model() -> None:
    engine = create_engine("simulated", "no-such-model", options={"rationale_tokens": 8})
    assert isinstance(engine, SimulatedEngine) and engine.model_name == "no-such-model"
    with pytest.raises(ValueError):
        create_engine("simulated", "m", options={"rationale_tokens": 0})


def test_a_worker_process_serves_a_job_with_it(make_stack: Any) -> None:
    stack = make_stack(
        CONTRAIL_MODEL="sim-8b",
        CONTRAIL_ENGINE="simulated",
        CONTRAIL_ENGINE_OPTIONS='{"rationale_tokens": 12}',
    )
    stack.worker(CONTRAIL_MODEL="sim-8b")
    decoding = {"max_new_tokens": 16, "counterfactual_fraction": 0.5}
    job_id = create_job(stack, 24, decoding, model="sim-8b")
    final = stack.wait_status(job_id, ("completed", "failed"), timeout=120)
    assert final["status"] == "completed", final
    assert_exactly_once(stack, job_id, item_ids(24), decoding, final)
