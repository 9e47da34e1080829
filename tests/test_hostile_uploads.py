"""Hostile uploads against the real API process (issue 19): a bounded cost in memory and CPU for
any upload, valid or not.

- A 200 MB cell, in every container format, is a 422 naming its record, and the API's peak RSS
  (VmHWM, reset before each upload) grows by less than 50 MB.
- A million empty records stop validation at the error budget: 422 saying so, the rest unread.
- A tenant's uploads beyond its concurrency cap get 429 with Retry-After; another tenant's do not.
- The filename is display metadata: it steers no storage key.
"""

from __future__ import annotations

import gzip
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contrail.testing.stack import KEY_A, KEY_B, METRICS_TOKEN, Stack, running_stack

CELL = 200 << 20
RSS_BOUND_MB = 50


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) // 1024  # MB
    return out


def _peak_growth_mb(stack: Stack, send: Any) -> tuple[httpx.Response, int]:
    """Run `send()` and return its response with the API's peak RSS growth over it (MB)."""
    assert stack.api is not None and stack.api.proc is not None
    pid = stack.api.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status(pid)["VmRSS"]
    response = send()
    return response, _status(pid)["VmHWM"] - before


def _uploads_validating(stack: Stack) -> float:
    r = httpx.get(
        f"{stack.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
    )
    r.raise_for_status()
    for line in r.text.splitlines():
        if line.startswith("contrail_uploads_validating "):
            return float(line.split()[1])
    raise AssertionError("no contrail_uploads_validating on /metrics")


def _parquet(rows: dict[str, list[Any]], **options: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(rows), buf, **options)
    return buf.getvalue()


def _post(stack: Stack, body: bytes, filename: str, key: str = KEY_A) -> httpx.Response:
    with stack.client(key) as c:
        return c.post("/v1/files", params={"task": "generic", "filename": filename}, content=body)


@pytest.fixture(scope="module")
def upload_stack(
    tmp_path_factory: Any, s3_server: Any, service_model_cache: Path
) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("uploads"),
        s3_server,
        service_model_cache,
        CONTRAIL_MAX_CONCURRENT_UPLOADS="2",
    ) as stack:
        yield stack


def _huge_cell_bodies() -> Iterator[tuple[str, str, bytes]]:
    line = b'{"id": "big", "question": "' + b"x" * CELL + b'", "answer": "a"}'
    yield "jsonl", "cell.jsonl", b'{"id": "a", "question": "q?", "answer": "a"}\n' + line + b"\n"
    yield (
        "json array",
        "cell.json",
        b'[{"id": "a", "question": "q?", "answer": "a"}, ' + line + b"]",
    )
    yield "gzip", "cell.jsonl.gz", gzip.compress(line + b"\n", compresslevel=1)
    big = {"id": ["big"], "question": ["x" * CELL], "answer": ["a"]}
    yield "parquet", "cell.parquet", _parquet(big)
    yield "parquet, plain", "plain.parquet", _parquet(big, use_dictionary=False, compression="none")


def test_a_huge_cell_is_422_and_costs_the_api_little(upload_stack: Stack) -> None:
    for kind, filename, body in _huge_cell_bodies():
        r, growth = _peak_growth_mb(
            upload_stack, lambda b=body, f=filename: _post(upload_stack, b, f)
        )
        assert r.status_code == 422, (kind, r.text)
        detail = r.json()["error"]["details"][0]
        assert detail["code"] == "line_too_long", (kind, detail)
        assert detail["line"] in (1, 2) or detail["record"] in (1, 2), (kind, detail)
        assert growth < RSS_BOUND_MB, f"{kind}: API peak RSS grew by {growth} MB"


def test_parquet_pages_over_the_bound_are_refused_unread(upload_stack: Stack) -> None:
    # Two records share a 200 MB dictionary page: no single record to name, so the file is
    # refused as a whole, before any of it is decoded.
    rows = {"id": ["a", "b"], "question": ["x" * CELL, "x" * CELL], "answer": ["a", "a"]}
    r, growth = _peak_growth_mb(
        upload_stack, lambda: _post(upload_stack, _parquet(rows), "two.parquet")
    )
    assert r.status_code == 422, r.text
    assert (
        "question" in r.json()["error"]["message"] and "records 1-2" in r.json()["error"]["message"]
    )
    assert growth < RSS_BOUND_MB, f"API peak RSS grew by {growth} MB"
    # One 4 MiB dictionary entry that 1,000 rows share: small pages, but a 4 GB batch if read
    # 256 rows at a time; read in batches that the entry's length bounds instead.
    shared = {"id": [f"s{i}" for i in range(1000)], "question": ["y" * (4 << 20)] * 1000}
    shared["answer"] = ["a"] * 1000
    body = _parquet(shared, dictionary_pagesize_limit=6 << 20)
    assert pq.ParquetFile(io.BytesIO(body)).metadata.row_group(0).column(1).has_dictionary_page
    r, growth = _peak_growth_mb(upload_stack, lambda: _post(upload_stack, body, "shared.parquet"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == "question"
    assert growth < RSS_BOUND_MB, f"API peak RSS grew by {growth} MB"
    # A valid file with large row groups is read in bounded batches, every record kept.
    n = 20_000
    ok = {
        "id": [f"i{i}" for i in range(n)],
        "question": [f"Is {i} even? " + "pad " * 100 for i in range(n)],
        "answer": ["yes"] * n,
        "choices": [["yes", "no"]] * n,
    }
    r = _post(upload_stack, _parquet(ok, row_group_size=n), "ok.parquet")
    assert r.status_code == 201, r.text
    assert r.json()["lines"] == n


@pytest.mark.parametrize("container", ["json", "jsonl"])
def test_a_million_bad_records_stop_at_the_error_budget(
    upload_stack: Stack, container: str
) -> None:
    n = 1_000_000
    body = b"[" + b",".join([b"{}"] * n) + b"]" if container == "json" else b"{}\n" * n
    r = _post(upload_stack, body, f"empty.{container}")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    unit = "record" if container == "json" else "line"
    assert f"validation stopped at {unit} 1000 after 1000 invalid {unit}s" in error["message"]
    assert "the rest of the file was not read" in error["message"]
    assert len(error["details"]) == 100
    assert error["details"][0][unit] == 1 and error["details"][-1][unit] == 100


def test_uploads_over_a_tenants_cap_get_429(upload_stack: Stack) -> None:
    release = threading.Event()
    results: list[int] = []

    def slow_body() -> Iterator[bytes]:
        yield b'{"id": "s1", "question": "q?", "answer": "a"}\n'
        release.wait(180)
        yield b'{"id": "s2", "question": "q?", "answer": "a"}\n'

    def slow_upload() -> None:
        with upload_stack.client(KEY_A) as c:
            results.append(c.post("/v1/files", content=slow_body()).status_code)

    holders = [threading.Thread(target=slow_upload) for _ in range(2)]
    for t in holders:
        t.start()
    try:
        # Until both slow uploads hold their slots (a loaded machine may take seconds to start
        # them). The API's gauge says so without taking a slot itself.
        deadline = time.monotonic() + 60
        while _uploads_validating(upload_stack) < 2:
            assert time.monotonic() < deadline, "the slow uploads never took their slots"
            time.sleep(0.05)
        with upload_stack.client(KEY_A) as c:
            third = c.post("/v1/files", content=b'{"id": "t", "question": "q?", "answer": "a"}\n')
        assert third.status_code == 429, third.text
        assert "being validated already" in third.json()["error"]["message"]
        assert third.headers["Retry-After"] == "5"
        other = _post(
            upload_stack, b'{"id": "o", "question": "q?", "answer": "a"}\n', "o.jsonl", KEY_B
        )
        assert other.status_code == 201, other.text
    finally:
        release.set()
        for t in holders:
            t.join(60)
    assert results == [201, 201]


def test_the_filename_is_display_metadata(upload_stack: Stack) -> None:
    body = b'{"id": "f", "question": "q?", "answer": "a"}\n'
    r = _post(upload_stack, body, "../../etc/passwd")
    assert r.status_code == 201, r.text
    file = r.json()
    assert file["filename"] == "../../etc/passwd"
    keys = upload_stack.storage().list_keys("")
    assert keys and all(".." not in k and "passwd" not in k for k in keys), keys
    assert all(k.startswith(("files/", "jobs/")) for k in keys)
    for bad in ("name\n.jsonl", "a\x1b[31m.jsonl", "x" * 257):
        r = _post(upload_stack, body, bad)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["field"] == "filename", r.text
