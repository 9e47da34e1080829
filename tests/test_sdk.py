"""The SDK against the real API server (uvicorn subprocess, Valkey, SeaweedFS S3, a worker on the
tiny model with the reference engine): no mock transport here."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from contrail.client import (
    APIResponse,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    RateLimitError,
    UnprocessableEntityError,
    WaitTimeoutError,
    to_pandas,
)
from contrail.client.types import DecodingSettings, JobStatus, RationaleRecord, Tag
from contrail.testing.stack import KEY_A, KEY_B, Stack, items_jsonl

N = 12


def _client(stack: Stack, key: str = KEY_A, **kw: Any) -> Client:
    return Client(api_key=key, base_url=stack.url, **kw)


def _items(n: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in items_jsonl(n).splitlines()]


def test_job_lifecycle_sync(stack: Stack, tmp_path: Path) -> None:
    stack.worker()
    src = tmp_path / "items.jsonl"
    src.write_bytes(items_jsonl(N))
    with _client(stack) as client:
        assert [(m.id, m.workers) for m in client.models.list().data] == [("tiny", 1)]
        uploaded = client.files.upload(src, task="generic", progress=True)
        assert uploaded.lines == N and uploaded.filename == "items.jsonl"
        assert client.files.retrieve(uploaded.id) == uploaded
        job = client.jobs.create(
            input_file_id=uploaded.id,
            model="tiny",
            decoding=DecodingSettings(max_new_tokens=8, counterfactual_fraction=0.5),
            metadata={"suite": "sdk"},
        )
        assert job.status in (JobStatus.VALIDATING, JobStatus.IN_PROGRESS)
        assert job.metadata == {"suite": "sdk"}
        done = client.jobs.wait(job.id, poll_interval=0.2, timeout=240, progress=True)
        assert done.status is JobStatus.COMPLETED, done
        counts = done.request_counts
        assert counts.completed == counts.total >= N and counts.failed == 0

        records = list(client.jobs.results(job.id))
        assert all(isinstance(r, RationaleRecord) for r in records)
        assert len(records) == counts.total
        assert {r.tag for r in records} <= {Tag.FACTUAL, Tag.COUNTERFACTUAL}
        assert sum(r.tag is Tag.FACTUAL for r in records) == N
        assert list(client.jobs.errors(job.id)) == []

        location = client.jobs.dataset(job.id)
        assert location.job_id == job.id and location.parquet_url

        # Parquet from the dataset location (presigned S3 URL, fetched without the API key).
        pq_path = client.jobs.download(job.id, tmp_path / "out.parquet")
        table = pq.read_table(pq_path)
        assert table.num_rows == len(records)
        assert sorted(table["item_id"].to_pylist()) == sorted(r.item_id for r in records)
        jsonl_path = client.jobs.download(job.id, tmp_path / "out.jsonl")
        lines = jsonl_path.read_text().splitlines()
        assert [RationaleRecord.model_validate_json(x) for x in lines] == records

        frame = to_pandas(records)
        assert len(frame) == len(records) and "decoding.lambda" in frame.columns

        # The same idempotency key and body return the same job.
        key = "sdk-idem-1"
        a = client.jobs.create(items=_items(2), model="tiny", idempotency_key=key)
        b = client.jobs.create(items=_items(2), model="tiny", idempotency_key=key)
        assert a.id == b.id
        with pytest.raises(ConflictError):
            client.jobs.create(items=_items(3), model="tiny", idempotency_key=key)


def test_job_lifecycle_async(stack: Stack, tmp_path: Path) -> None:
    stack.worker()
    src = tmp_path / "items.jsonl"
    src.write_bytes(items_jsonl(N))

    async def run() -> None:
        async with AsyncClient(api_key=KEY_A, base_url=stack.url) as client:
            models = await client.models.list()
            assert [m.id for m in models.data] == ["tiny"]
            uploaded = await client.files.upload(src, task="generic")
            assert (await client.files.retrieve(uploaded.id)).lines == N
            job = await client.jobs.create(
                input_file_id=uploaded.id, model="tiny", decoding={"max_new_tokens": 8}
            )
            assert (await client.jobs.retrieve(job.id)).id == job.id
            done = await client.jobs.wait(job.id, poll_interval=0.2, timeout=240)
            assert done.status is JobStatus.COMPLETED
            records = [r async for r in client.jobs.results(job.id)]
            assert len(records) == done.request_counts.total == N
            assert [e async for e in client.jobs.errors(job.id)] == []
            path = await client.jobs.download(job.id, tmp_path / "async.parquet")
            assert pq.read_table(path).num_rows == N
            page = await client.jobs.list(limit=5)
            assert page.data[0].id == job.id
            assert [j.id async for j in client.jobs.list()] == [job.id]

    asyncio.run(run())


def test_pagination_across_pages(make_stack: Any) -> None:
    stack: Stack = make_stack(CONTRAIL_REQUIRE_LIVE_WORKER="false")
    with _client(stack) as client:
        created = [client.jobs.create(items=_items(1), model="tiny").id for _ in range(7)]
        newest_first = created[::-1]
        first = client.jobs.list(limit=3)
        assert [j.id for j in first.data] == newest_first[:3]
        assert first.has_more and first.has_next_page()
        second = first.next_page()
        assert [j.id for j in second.data] == newest_first[3:6]
        assert [len(p.data) for p in first.iter_pages()] == [3, 3, 1]
        assert [j.id for j in first] == newest_first
        # Another tenant sees none of them.
        with _client(stack, KEY_B) as other:
            assert list(other.jobs.list(limit=2)) == []

    async def run() -> None:
        async with AsyncClient(api_key=KEY_A, base_url=stack.url) as client:
            page = await client.jobs.list(limit=2)
            assert [j.id for j in page.data] == newest_first[:2]
            assert [j.id async for j in page] == newest_first
            assert [j.id async for j in client.jobs.list(limit=4)] == newest_first

    asyncio.run(run())


def test_wait_timeout_and_cancel(make_stack: Any) -> None:
    stack: Stack = make_stack(CONTRAIL_REQUIRE_LIVE_WORKER="false")
    with _client(stack) as client:
        job = client.jobs.create(items=_items(2), model="tiny")
        with pytest.raises(WaitTimeoutError) as info:
            client.jobs.wait(job.id, poll_interval=0.1, timeout=0.5)
        assert info.value.job.id == job.id and not info.value.job.status.terminal
        cancelled = client.jobs.cancel(job.id)
        assert cancelled.status in (JobStatus.CANCELLING, JobStatus.CANCELLED)


def test_raw_responses_and_per_call_timeouts(make_stack: Any) -> None:
    """``with_raw_response`` gives the HTTP answer beside what the plain call returns, and a
    per-call ``timeout`` reaches the request that is sent (read from httpx's own request)."""
    stack: Stack = make_stack(CONTRAIL_REQUIRE_LIVE_WORKER="false")
    sent: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    with _client(stack, http_client=http, timeout=30.0) as client:
        raw_file = client.files.with_raw_response.upload(items_jsonl(2), task="generic")
        assert isinstance(raw_file, APIResponse) and raw_file.status_code == 201
        uploaded = raw_file.parse()
        assert uploaded == client.files.retrieve(uploaded.id)
        raw = client.jobs.with_raw_response.create(input_file_id=uploaded.id, model="tiny")
        assert raw.status_code == 201
        assert raw.headers["content-type"].startswith("application/json")
        assert raw.parse().id == client.jobs.retrieve(raw.parse().id).id
        listed = client.jobs.with_raw_response.list(limit=1)
        assert listed.status_code == 200 and [j.id for j in listed.parse().data] == [raw.parse().id]
        assert client.models.with_raw_response.list().parse() == client.models.list()

        sent.clear()
        client.jobs.retrieve(raw.parse().id, timeout=7.5)
        client.jobs.retrieve(raw.parse().id)
        client.with_options(timeout=3.0).models.list()
        reads = [r.extensions["timeout"]["read"] for r in sent]
        assert reads == [7.5, 30.0, 3.0], reads
    http.close()


def test_async_destructive_routes(stack: Stack) -> None:
    """The async client's cancel, resubmit, delete and files.delete against the real stack."""
    stack.worker()

    async def run() -> None:
        async with AsyncClient(api_key=KEY_A, base_url=stack.url) as client:
            spare = await client.files.upload(items_jsonl(1), task="generic")
            assert (await client.files.delete(spare.id)).deleted
            with pytest.raises(NotFoundError):
                await client.files.retrieve(spare.id)
            job = await client.jobs.create(
                items=_items(40), model="tiny", decoding={"max_new_tokens": 24}
            )
            cancelled = await client.jobs.cancel(job.id)
            assert cancelled.status in (JobStatus.CANCELLING, JobStatus.CANCELLED)
            cancelled = await client.jobs.wait(job.id, poll_interval=0.2, timeout=120)
            assert cancelled.status is JobStatus.CANCELLED
            again = await client.jobs.resubmit(job.id)
            assert again.id != job.id and again.metadata == {"resubmitted_from": job.id}
            finished = await client.jobs.wait(again.id, poll_interval=0.2, timeout=240)
            assert finished.status is JobStatus.COMPLETED
            for done in (job.id, again.id):
                raw = await client.jobs.with_raw_response.delete(done)
                assert raw.status_code == 200 and raw.parse().deleted
                with pytest.raises(NotFoundError):
                    await client.jobs.retrieve(done)

    asyncio.run(run())


def test_typed_errors(stack: Stack) -> None:
    with _client(stack, key="sk-wrong") as bad, pytest.raises(AuthenticationError) as auth:
        bad.models.list()
    assert auth.value.status_code == 401

    with _client(stack) as client:
        with pytest.raises(NotFoundError) as nf:
            client.jobs.retrieve("job_does_not_exist")
        assert nf.value.status_code == 404 and nf.value.body is not None
        with pytest.raises(NotFoundError):
            client.files.retrieve("file_nope")
        with pytest.raises(NotFoundError):
            list(client.jobs.results("job_does_not_exist"))

        lines = items_jsonl(3).decode().splitlines()
        lines.insert(1, "{not json")
        lines.append(json.dumps({"id": "x", "question": "q", "answer": "c", "choices": ["a", "b"]}))
        with pytest.raises(UnprocessableEntityError) as bad_input:
            client.files.upload(("\n".join(lines) + "\n").encode(), task="generic")
        details = bad_input.value.details
        assert bad_input.value.status_code == 422
        assert [d.line for d in details] == [2, 5], details
        assert all(d.message for d in details)

        with pytest.raises(UnprocessableEntityError):  # no live worker serves this model
            client.jobs.create(items=_items(1), model="no-such-model")


def test_retry_on_real_rate_limit(make_stack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The server's rate limiter answers 429 + Retry-After; the client waits and succeeds.

    The stack's rate window is 4 s instead of a minute (CONTRAIL_RATE_WINDOW_S), and the three
    requests start at the beginning of one, so they fall in the same window and the server's
    Retry-After (seconds to the next window) is short."""
    stack: Stack = make_stack(CONTRAIL_RATE_LIMIT_PER_MINUTE="2", CONTRAIL_RATE_WINDOW_S="4")
    payload = items_jsonl(1)
    while time.time() % 4 > 0.3:
        time.sleep(0.02)
    with _client(stack, max_retries=0) as strict, _client(stack, max_retries=2) as patient:
        strict.files.upload(payload)
        strict.files.upload(payload)
        with pytest.raises(RateLimitError) as limited:
            strict.files.upload(payload)
        assert limited.value.status_code == 429
        assert limited.value.retry_after is not None and 1 <= limited.value.retry_after <= 5
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="contrail.client"):
            uploaded = patient.files.upload(payload)
        waited = time.monotonic() - started
    assert uploaded.lines == 1
    assert any("-> 429; retrying" in r.getMessage() for r in caplog.records)
    assert waited >= 0.9
