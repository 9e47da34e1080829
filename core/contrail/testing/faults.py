"""Counting from outside the worker: what a job must hold, computed from its input and the
counterfactual rule (re-implemented here from its definition, not imported), compared with what
storage and Redis really hold."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from typing import Any

import redis

from contrail.core.jobs import keys
from contrail.testing.stack import Stack, items_jsonl, read_jsonl


def _unit(*parts: object) -> float:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def expected_pairs(ids: list[str], decoding: dict[str, Any]) -> set[tuple[str, str]]:
    """(item id, tag) of every rationale a job over `ids` owes (docs/METHOD.md 3: a counterfactual
    for the items whose SHA-256 draw falls under the fraction)."""
    seed = int(decoding.get("seed", 0))
    fraction = float(decoding.get("counterfactual_fraction", 0.0))
    out = {(i, "factual") for i in ids}
    out |= {
        (i, "counterfactual")
        for i in ids
        if fraction > 0 and _unit("counterfactual-select", seed, i) < fraction
    }
    return out


def item_ids(n: int, start: int = 0) -> list[str]:
    return [f"q{i:06d}" for i in range(start, start + n)]


def create_job(
    stack: Stack, n: int, decoding: dict[str, Any], model: str = "tiny", **extra: Any
) -> str:
    r = stack.upload(items_jsonl(n))
    assert r.status_code == 201, r.text
    with stack.client() as c:
        body = {"input_file_id": r.json()["id"], "model": model, "decoding": decoding, **extra}
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def job(stack: Stack, job_id: str) -> dict[str, Any]:
    with stack.client() as c:
        out: dict[str, Any] = c.get(f"/v1/jobs/{job_id}").json()
        return out


def wait_progress(stack: Stack, job_id: str, at_least: int, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = int(job(stack, job_id)["request_counts"]["completed"])
        if done >= at_least:
            return done
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} made no progress to {at_least}")


def stored(stack: Stack, job_id: str) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """(item id, tag) of every record in the merged dataset, and the merged errors."""
    storage = stack.storage()
    records = read_jsonl(storage.get(f"jobs/{job_id}/dataset.jsonl"))
    errors = read_jsonl(storage.get(f"jobs/{job_id}/errors.jsonl"))
    return [(r["item_id"], r["tag"]) for r in records], errors


def stats(stack: Stack) -> dict[str, int]:
    r = redis.Redis.from_url(stack.valkey.url, decode_responses=True)
    try:
        return {str(k): int(float(v)) for k, v in r.hgetall(keys.STATS).items()}
    finally:
        r.close()


def assert_exactly_once(
    stack: Stack, job_id: str, ids: list[str], decoding: dict[str, Any], final: dict[str, Any]
) -> None:
    """Every owed rationale is in the dataset (or its errors) exactly once, and the job's counts
    are those of storage."""
    want = expected_pairs(ids, decoding)
    pairs, errors = stored(stack, job_id)
    dupes = [p for p, k in Counter(pairs).items() if k > 1]
    assert not dupes, f"duplicated rationales: {dupes[:5]}"
    failed = {(e["item_id"], e["tag"]) for e in errors}
    assert set(pairs) | failed == want, (
        f"lost: {sorted(want - set(pairs) - failed)[:5]}; "
        f"unexpected: {sorted((set(pairs) | failed) - want)[:5]}"
    )
    counts = final["request_counts"]
    assert counts["total"] == len(want)
    assert counts["completed"] == len(pairs)
    assert counts["failed"] == len(errors)


def shards_of(n_items: int, shard_size: int) -> int:
    return -(-n_items // shard_size)


def redis_client(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.valkey.url, decode_responses=True)


def manifest(stack: Stack, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(stack.storage().get(f"jobs/{job_id}/manifest.json"))
    return data
