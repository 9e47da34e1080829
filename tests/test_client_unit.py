"""Non-I/O pieces of the SDK: retry decisions, Retry-After parsing, backoff bounds, error mapping,
configuration, pagination. The HTTP behaviour itself is tested against the real server in
test_sdk.py; httpx.MockTransport appears here only for a connection-error sequence that a live
server cannot produce on demand.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from contrail.client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    ContrailError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    RequestTooLargeError,
    SyncCursorPage,
    UnprocessableEntityError,
)
from contrail.client._base import (
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    RequestOptions,
    make_status_error,
    parse_retry_after,
    retry_delay,
    should_retry_exception,
    should_retry_status,
)
from contrail.client.helpers import format_for_path

# ------------------------------------------------------------------------------ retry decisions


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(status: int) -> None:
    assert should_retry_status(status)


@pytest.mark.parametrize("status", [200, 201, 400, 401, 403, 404, 409, 413, 422])
def test_non_retryable_statuses(status: int) -> None:
    assert not should_retry_status(status)
    assert not should_retry_status(status, {})


def test_conflict_retried_only_with_retry_after() -> None:
    # 409 + Retry-After: the same idempotency key is still in flight (transient);
    # a bare 409: the key was used with another body (permanent).
    assert should_retry_status(409, {"Retry-After": "1"})
    assert not should_retry_status(409, {"Content-Type": "application/json"})


def test_retryable_exceptions() -> None:
    req = httpx.Request("GET", "http://x")
    assert should_retry_exception(httpx.ConnectError("refused", request=req))
    assert should_retry_exception(httpx.ReadTimeout("slow", request=req))
    assert should_retry_exception(httpx.RemoteProtocolError("eof", request=req))
    assert should_retry_exception(httpx.ReadError("reset", request=req))
    assert not should_retry_exception(httpx.UnsupportedProtocol("ftp", request=req))
    assert not should_retry_exception(ValueError("x"))


# ------------------------------------------------------------------------------ Retry-After


def test_retry_after_seconds() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after": " 1.5 "}) == 1.5
    assert parse_retry_after({"retry-after": "0"}) == 0.0


def test_retry_after_ms_wins() -> None:
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25


def test_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    header = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after({"Retry-After": header}, now=now) == pytest.approx(7.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now=now) == 0.0


@pytest.mark.parametrize(
    "headers",
    [{}, {"retry-after": "soon"}, {"retry-after": "-1"}, {"retry-after-ms": "x"}, {"x": "1"}],
)
def test_retry_after_absent_or_garbage(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers) is None


# ------------------------------------------------------------------------------ backoff


def test_backoff_grows_and_is_capped() -> None:
    no_jitter = [retry_delay(n, rand=lambda: 0.0) for n in range(8)]
    assert no_jitter[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert all(d == MAX_RETRY_DELAY for d in no_jitter[4:])


def test_backoff_jitter_bounds() -> None:
    for n in range(10):
        base = min(0.5 * 2**n, MAX_RETRY_DELAY)
        for _ in range(50):
            d = retry_delay(n)
            assert 0.75 * base <= d <= base
        assert retry_delay(n, rand=lambda: 1.0) == pytest.approx(0.75 * base)


def test_backoff_honours_retry_after_within_bound() -> None:
    assert retry_delay(0, 12.0) == 12.0
    assert retry_delay(3, 0.0) == 0.0
    # A Retry-After beyond the bound falls back to the computed backoff.
    assert retry_delay(0, MAX_RETRY_AFTER + 1, rand=lambda: 0.0) == 0.5


# ------------------------------------------------------------------------------ error mapping


def _response(
    status: int, body: object | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = json.dumps(body).encode() if body is not None else b"plain text failure"
    return httpx.Response(
        status,
        content=content,
        headers=headers or {},
        request=httpx.Request("GET", "http://127.0.0.1/v1/jobs/x"),
    )


def _error(
    type_: str, message: str, details: list[dict[str, object]] | None = None
) -> dict[str, object]:
    return {"error": {"type": type_, "message": message, "details": details or []}}


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, RequestTooLargeError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (503, InternalServerError),
        (418, APIStatusError),
    ],
)
def test_status_error_classes(status: int, cls: type[APIStatusError]) -> None:
    exc = make_status_error(_response(status, _error("x", "boom")))
    assert type(exc) is cls
    assert exc.status_code == status
    assert exc.type == "x"
    assert "boom" in str(exc)
    assert exc.response.status_code == status


def test_unprocessable_details_and_message() -> None:
    body = _error(
        "invalid_input",
        "2 bad lines",
        [
            {"line": 2, "field": "answer", "code": "answer_not_in_choices", "message": "nope"},
            {"line": 5, "code": "invalid_json", "message": "bad json"},
        ],
    )
    exc = make_status_error(_response(422, body))
    assert isinstance(exc, UnprocessableEntityError)
    assert [d.line for d in exc.details] == [2, 5]
    assert exc.details[0].field == "answer"
    assert exc.body is not None and exc.body.error.message == "2 bad lines"


def test_rate_limit_carries_retry_after() -> None:
    exc = make_status_error(
        _response(429, _error("rate_limited", "slow down"), {"Retry-After": "4"})
    )
    assert isinstance(exc, RateLimitError)
    assert exc.retry_after == 4.0


def test_non_json_error_body() -> None:
    exc = make_status_error(_response(502))
    assert isinstance(exc, InternalServerError)
    assert exc.body is None and exc.details == [] and exc.type is None
    assert "plain text failure" in str(exc)


# ------------------------------------------------------------------------------ configuration


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTRAIL_API_KEY", "env-key")
    monkeypatch.setenv("CONTRAIL_BASE_URL", "http://example.test:9000/prefix")
    with Client() as c:
        assert c.api_key == "env-key"
        req = c._build_request(
            RequestOptions("GET", "/v1/jobs", params={"limit": 5, "after": None})
        )
        assert str(req.url) == "http://example.test:9000/prefix/v1/jobs?limit=5"
        assert req.headers["Authorization"] == "Bearer env-key"
    with Client(api_key="arg-key", base_url="http://other.test") as c:
        assert c.api_key == "arg-key"
        assert str(c.base_url) == "http://other.test/"


def test_missing_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTRAIL_API_KEY", raising=False)
    with pytest.raises(ContrailError, match="CONTRAIL_API_KEY"):
        Client()


def test_timeout_config() -> None:
    with Client(api_key="k", timeout=3.0) as c:
        assert c.timeout == httpx.Timeout(3.0)
    with Client(api_key="k", timeout=None) as c:
        assert c.timeout == httpx.Timeout(None)
    t = httpx.Timeout(10.0, connect=1.0)
    with Client(api_key="k", timeout=t) as c:
        assert c.timeout is t


def test_path_ids_checked() -> None:
    with Client(api_key="k") as c, pytest.raises(ValueError):
        c.jobs.retrieve("")
    with Client(api_key="k") as c, pytest.raises(ValueError):
        c.jobs.retrieve("a/b")


def test_format_for_path() -> None:
    assert format_for_path("x.parquet") == "parquet"
    assert format_for_path("x.JSONL") == "jsonl"
    assert format_for_path("x.bin", "jsonl") == "jsonl"
    with pytest.raises(ValueError):
        format_for_path("x.csv")


# ------------------------------------------------------------------------------ pagination


def test_sync_page_walks_all_pages() -> None:
    pages = {None: ([1, 2], True), "2": ([3, 4], True), "4": ([5], False)}

    def fetch(after: str | None) -> SyncCursorPage[int]:
        data, more = pages[after]
        return SyncCursorPage(data=data, has_more=more, last_id=str(data[-1]), fetch=fetch)

    first = fetch(None)
    assert first.data == [1, 2]
    assert list(first) == [1, 2, 3, 4, 5]
    assert [p.data for p in first.iter_pages()] == [[1, 2], [3, 4], [5]]


# ------------------------------------------------------------------------------ the retry loop
# (edge cases only: a live server cannot refuse connections on demand)


def test_connection_errors_are_retried_then_succeed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: None)
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("Idempotency-Key", ""))
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(201, json=_job_json())

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with Client(api_key="k", max_retries=3, http_client=http) as c:
        job = c.jobs.create(model="tiny", items=[{"id": "a", "question": "q", "answer": "a"}])
    assert job.id == "job_1"
    assert len(calls) == 3
    # One idempotency key, reused by every attempt.
    assert len(set(calls)) == 1 and calls[0].startswith("contrail-")


def test_connection_errors_exhaust_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: None)
    n = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal n
        n += 1
        raise httpx.ConnectError("refused", request=request)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with (
        Client(api_key="k", max_retries=2, http_client=http) as c,
        pytest.raises(APIConnectionError) as info,
    ):
        c.jobs.retrieve("job_1")
    assert n == 3
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_timeout_maps_to_api_timeout_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: None)

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with Client(api_key="k", max_retries=0, http_client=http) as c, pytest.raises(APITimeoutError):
        c.models.list()


def _dataset_server(
    fail_first: int, seen: list[httpx.Request]
) -> Callable[[httpx.Request], httpx.Response]:
    """The API's dataset location, and an object store whose first GETs fail with 503."""
    body = b'{"item_id": "a"}\n'

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/jobs/job_1/dataset":
            url = "https://store.example/bucket/job_1.jsonl?X-Amz-Signature=abc"
            return httpx.Response(
                200,
                json={"job_id": "job_1", "jsonl_url": url, "parquet_url": None,
                      "errors_url": None, "manifest_url": None},
            )  # fmt: skip
        if sum(r.url.host == "store.example" for r in seen) <= fail_first:
            return httpx.Response(503, text="slow down")
        return httpx.Response(200, content=body)

    return handler


def test_download_of_a_presigned_url_is_retried_and_carries_no_api_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: None)
    seen: list[httpx.Request] = []
    http = httpx.Client(transport=httpx.MockTransport(_dataset_server(2, seen)))
    with Client(api_key="k", max_retries=2, http_client=http) as c:
        path = c.jobs.download("job_1", tmp_path / "out.jsonl")
    assert path.read_bytes() == b'{"item_id": "a"}\n'
    store = [r for r in seen if r.url.host == "store.example"]
    assert len(store) == 3  # two 503s, then the file
    assert all("Authorization" not in r.headers for r in store)
    assert all(r.url.params["X-Amz-Signature"] == "abc" for r in store)
    api = [r for r in seen if r.url.host != "store.example"]
    assert api[0].headers["Authorization"] == "Bearer k"
    # Out of retries: the store's error, not a half-written file.
    seen.clear()
    http = httpx.Client(transport=httpx.MockTransport(_dataset_server(5, seen)))
    with (
        Client(api_key="k", max_retries=1, http_client=http) as c,
        pytest.raises(InternalServerError),
    ):
        c.jobs.download("job_1", tmp_path / "again.jsonl")
    assert not (tmp_path / "again.jsonl").exists()


def test_async_download_of_a_presigned_url_is_retried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_sleep = asyncio.sleep

    async def no_backoff(delay: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", no_backoff)
    seen: list[httpx.Request] = []
    handler = _dataset_server(1, seen)

    async def run() -> Path:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with AsyncClient(api_key="k", max_retries=1, http_client=http) as c:
            return await c.jobs.download("job_1", tmp_path / "out.jsonl")

    path = asyncio.run(run())
    assert path.read_bytes() == b'{"item_id": "a"}\n'
    assert sum(r.url.host == "store.example" for r in seen) == 2


def test_with_options_changes_timeout_and_retries_and_shares_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: None)
    attempts: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        return httpx.Response(503, text="busy")

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with Client(api_key="k", max_retries=3, timeout=60, http_client=http) as c:
        quick = c.with_options(timeout=5, max_retries=0)
        assert quick._http is c._http and (quick.api_key, quick.base_url) == (c.api_key, c.base_url)
        with pytest.raises(InternalServerError):
            quick.models.list()
        assert len(attempts) == 1
        assert attempts[0].extensions["timeout"]["read"] == 5
        quick.close()  # a copy does not close the shared pool
        with pytest.raises(InternalServerError):
            c.models.list()
        assert len(attempts) == 1 + 4  # the original keeps its 3 retries and 60 s
        assert attempts[-1].extensions["timeout"]["read"] == 60
    only_retries = Client(api_key="k", timeout=7).with_options(max_retries=1)
    assert only_retries.timeout.read == 7 and only_retries.max_retries == 1
    assert AsyncClient(api_key="k").with_options(max_retries=0).max_retries == 0


def _job_json() -> dict[str, object]:
    return {
        "id": "job_1",
        "status": "validating",
        "task": "generic",
        "model": "tiny",
        "decoding": {},
        "request_counts": {"total": 1},
        "created_at": 1,
    }


# ------------------------------------------------------------------------------ import hygiene


def test_sdk_imports_without_heavy_dependencies() -> None:
    code = (
        "import sys, contrail.client, contrail.client.cli, contrail.client.types\n"
        "heavy = ['torch', 'vllm', 'fastapi', 'starlette', 'uvicorn', 'redis', 'valkey',"
        " 'transformers', 'pandas', 'pyarrow', 'datasets', 'contrail.service', 'contrail.worker']\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"contrail.client imported: {out.stdout.strip()}"


def test_the_api_process_loads_no_ml_stack() -> None:
    """What an API process really loads (import-linter sees only direct imports): no torch,
    vLLM or transformers, and nothing of the workers or the student side. numpy does come in,
    through pyarrow, which writes the Parquet files."""
    code = (
        "import sys, contrail.service.app\n"
        "heavy = ['torch', 'vllm', 'transformers', 'contrail.worker', 'contrail.distill']\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "", f"contrail.service.app imported: {out.stdout.strip()}"
