"""One tenant's job must never take down the fleet (issue 19), on the real stack: real Valkey,
real SeaweedFS, the real API and real worker processes.

- An item that kills its worker (SIGKILL, as the OOM killer sends it, from the fault hook of
  tests/poison_worker.py) costs at most two worker restarts: it becomes a `worker_crashed`
  error and every other item, of its job and of another tenant's job, completes exactly once,
  counted from storage.
- Prompts that cannot fit the context are per-item `prompt_too_long` errors while the other
  items of their shard complete.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from contrail.testing.faults import assert_exactly_once, expected_pairs, job, stored
from contrail.testing.stack import KEY_A, KEY_B, Stack, yes_no_items
from tests.poison_worker import POISON

REPO = Path(__file__).resolve().parent.parent
DECODING = {"max_new_tokens": 6, "counterfactual_fraction": 0.5}


def _create(stack: Stack, items: list[dict[str, Any]], key: str) -> str:
    with stack.client(key) as c:
        r = c.post("/v1/jobs", json={"items": items, "model": "tiny", "decoding": DECODING})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def _terminal(stack: Stack, job_id: str, key: str) -> bool:
    with stack.client(key) as c:
        return c.get(f"/v1/jobs/{job_id}").json()["status"] in ("completed", "failed", "cancelled")


@pytest.mark.slow
def test_an_item_that_kills_workers_costs_two_restarts(make_stack: Any) -> None:
    stack: Stack = make_stack(
        CONTRAIL_CLAIM_IDLE_MS="1500", CONTRAIL_HEARTBEAT_INTERVAL_S="0.3", PYTHONPATH=str(REPO)
    )
    poisoned = yes_no_items(40, "a")
    poison_id = poisoned[13]["id"]
    poisoned[13]["question"] = f"Is {POISON} an even number?"
    worker = stack.worker(module="tests.poison_worker")
    a = _create(stack, poisoned, KEY_A)
    b = _create(stack, yes_no_items(24, "b"), KEY_B)  # another tenant's job, in the same queue
    deaths: list[dict[str, Any]] = []
    deadline = time.monotonic() + 400
    while not (_terminal(stack, a, KEY_A) and _terminal(stack, b, KEY_B)):
        assert time.monotonic() < deadline, (
            f"jobs unfinished; deaths {deaths}\n{worker.log()[-3000:]}"
        )
        code = worker.proc.poll() if worker.proc is not None else None
        if code is not None:
            # The supervisor's part (contrail up, Kubernetes): note the death, start another.
            counts = job(stack, a)["request_counts"]
            deaths.append({"exit": code, "done": counts["completed"] + counts["failed"]})
            worker = stack.worker(module="tests.poison_worker", wait=False)
        time.sleep(0.2)

    # The fault hit work in progress, and cost at most two workers.
    assert 1 <= len(deaths) <= 2, deaths
    owed_a = len(expected_pairs([i["id"] for i in poisoned], DECODING))
    assert all(d["exit"] == -9 and d["done"] < owed_a for d in deaths), deaths
    final_a, final_b = job(stack, a), None
    with stack.client(KEY_B) as c:
        final_b = c.get(f"/v1/jobs/{b}").json()
    assert final_a["status"] == final_b["status"] == "completed", (final_a, final_b)

    # Counted from storage: every rationale of both jobs exactly once, as a record or an error,
    # and the only errors are the poison item's.
    assert_exactly_once(stack, a, [i["id"] for i in poisoned], DECODING, final_a)
    pairs_a, errors_a = stored(stack, a)
    assert {e["item_id"] for e in errors_a} == {poison_id}
    assert {e["code"] for e in errors_a} == {"worker_crashed"}
    assert poison_id not in {i for i, _ in pairs_a}
    assert_exactly_once(stack, b, [f"b{i:03d}" for i in range(24)], DECODING, final_b)
    assert stored(stack, b)[1] == []


def test_prompts_that_cannot_fit_are_per_item_errors(stack: Stack) -> None:
    stack.worker()
    items = yes_no_items(8, "p")
    # Over the engine's character bound (context x longest vocabulary entry): refused before
    # the prompt is assembled or tokenized.
    items[2]["choices"] = [f"{i:02d}{'x' * 2040}" for i in range(60)]
    items[2]["answer"] = items[2]["choices"][0]
    # Under that bound but over the context once tokenized: refused by the engine.
    items[5]["question"] = "why " * 8000
    a = _create(stack, items, KEY_A)
    final = stack.wait_status(a, ("completed", "failed"))
    assert final["status"] == "completed", final
    assert_exactly_once(stack, a, [i["id"] for i in items], DECODING, final)
    pairs, errors = stored(stack, a)
    assert {(e["item_id"], e["code"]) for e in errors} == {
        ("p002", "prompt_too_long"),
        ("p005", "prompt_too_long"),
    }
    assert {i for i, _ in pairs} == {f"p{i:03d}" for i in range(8)} - {"p002", "p005"}
    assert all(json.dumps(e).count("x" * 100) == 0 for e in errors)  # no prompt echoed back
