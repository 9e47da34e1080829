"""End to end on real servers: upload -> job -> worker -> completed dataset in S3 (SeaweedFS)."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from contrail.client.types import Manifest
from contrail.testing.faults import expected_pairs, item_ids
from contrail.testing.stack import METRICS_TOKEN, Stack, items_jsonl, read_jsonl

N_ITEMS = 40
FRACTION = 0.5


def run_job(stack: Stack, n: int, decoding: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    r = stack.upload(items_jsonl(n))
    assert r.status_code == 201, r.text
    fobj = r.json()
    assert fobj["lines"] == n and fobj["format"] == "generic"
    with stack.client() as c:
        r = c.post(
            "/v1/jobs",
            json={
                "input_file_id": fobj["id"],
                "model": "tiny",
                "decoding": decoding,
                "metadata": {"run": "e2e"},
            },
        )
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
    return job_id, stack.wait_status(job_id, ("completed", "failed", "cancelled"))


def check_dataset(stack: Stack, job_id: str, job: dict[str, Any], n: int) -> list[dict[str, Any]]:
    want = expected_pairs(item_ids(n), {"counterfactual_fraction": FRACTION})
    storage = stack.storage()
    base = f"jobs/{job_id}"
    records = read_jsonl(storage.get(f"{base}/dataset.jsonl"))
    pairs = [(r["item_id"], r["tag"]) for r in records]
    assert len(pairs) == len(set(pairs)), "duplicated records"
    assert set(pairs) == want
    # item order: the dataset follows the input order
    assert [p[0] for p in pairs] == sorted(p[0] for p in pairs)
    table = pq.read_table(io.BytesIO(storage.get(f"{base}/dataset.parquet")))
    assert table.num_rows == len(records)
    assert sorted(zip(table["item_id"].to_pylist(), table["tag"].to_pylist(), strict=True)) == (
        sorted(pairs)
    )
    manifest = Manifest.model_validate_json(storage.get(f"{base}/manifest.json"))
    assert manifest.request_counts.total == len(want) == job["request_counts"]["total"]
    assert manifest.request_counts.completed == len(records) == job["request_counts"]["completed"]
    assert manifest.request_counts.failed == 0 == job["request_counts"]["failed"]
    assert len(want) > n, "the job owes counterfactuals (FRACTION of the items)"
    assert manifest.counts_by_tag == {"factual": n, "counterfactual": len(want) - n}
    assert manifest.usage.completion_tokens == sum(r["completion_tokens"] for r in records)
    assert manifest.engine_seconds > 0 and manifest.wall_seconds >= 0
    assert manifest.quality is not None, "the manifest carries the dataset's quality signals"
    assert manifest.quality["records"] == len(records)
    assert manifest.quality["counts_by_tag"] == manifest.counts_by_tag
    assert storage.get(f"{base}/errors.jsonl") == b""
    return records


def test_end_to_end_reference_engine(stack: Stack) -> None:
    stack.worker()
    with stack.client() as c:
        models = c.get("/v1/models").json()
        assert models["data"] == [
            {"id": "tiny", "object": "model", "workers": 1, "declared": False, "backlog": 0}
        ]
    job_id, job = run_job(
        stack, N_ITEMS, {"counterfactual_fraction": FRACTION, "max_new_tokens": 12}
    )
    assert job["status"] == "completed", job
    assert job["metadata"] == {"run": "e2e"}
    assert job["completed_at"] and job["in_progress_at"] and job["finalizing_at"]
    records = check_dataset(stack, job_id, job, N_ITEMS)
    with stack.client() as c:
        # results stream over HTTP: the same records
        streamed = read_jsonl(c.get(f"/v1/jobs/{job_id}/results").content)
        assert streamed == records
        assert c.get(f"/v1/jobs/{job_id}/errors").content == b""
        loc = c.get(f"/v1/jobs/{job_id}/dataset").json()
        assert loc["expires_at"] is not None
        # presigned URL readable without credentials
        signed = httpx.get(loc["jsonl_url"], timeout=30)
        assert signed.status_code == 200
        assert read_jsonl(signed.content) == records
        assert json.loads(httpx.get(loc["manifest_url"], timeout=30).content)["job_id"] == job_id
        listing = c.get("/v1/jobs").json()
        assert listing["data"][0]["id"] == job_id
        metrics = httpx.get(
            f"{stack.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        ).text
        assert "contrail_items_completed_total" in metrics
        assert 'contrail_workers{model="tiny"} 1.0' in metrics
        assert "contrail_job_duration_seconds_count 1.0" in metrics
    assert c.is_closed


def test_inline_items_job(stack: Stack) -> None:
    stack.worker()
    items = [json.loads(line) for line in items_jsonl(10).splitlines()]
    with stack.client() as c:
        r = c.post(
            "/v1/jobs",
            json={"items": items, "model": "tiny", "decoding": {"max_new_tokens": 8}},
        )
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        assert r.json()["request_counts"]["total"] == 10
    job = stack.wait_status(job_id, ("completed", "failed"))
    assert job["status"] == "completed"
    assert job["request_counts"] == {"total": 10, "completed": 10, "failed": 0}


@pytest.mark.slow
@pytest.mark.vllm
def test_end_to_end_vllm_engine(make_stack: Any) -> None:
    """The same path with the production engine (vLLM CPU build, tiny model)."""
    pytest.importorskip("vllm")
    stack: Stack = make_stack(CONTRAIL_ENGINE="vllm", CONTRAIL_ENGINE_OPTIONS="{}")
    stack.worker()
    job_id, job = run_job(
        stack, N_ITEMS, {"counterfactual_fraction": FRACTION, "max_new_tokens": 12}
    )
    assert job["status"] == "completed", job
    check_dataset(stack, job_id, job, N_ITEMS)
