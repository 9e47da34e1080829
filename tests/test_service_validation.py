"""The bad-input matrix: each a clear 4xx naming the line or field, and nothing stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from contrail.testing.stack import (
    KEY_A,
    KEY_B,
    Stack,
    announce_worker,
    items_jsonl,
    running_stack,
    upload_error,
)

GOOD = {"id": "a", "question": "Is the sky blue?", "answer": "yes", "choices": ["yes", "no"]}


def line(**over: Any) -> str:
    return json.dumps({**GOOD, **over})


@pytest.fixture(scope="module")
def vstack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    s3 = request.getfixturevalue("s3_server")
    tmp = tmp_path_factory.mktemp("validation")
    with running_stack(
        tmp,
        s3,
        tmp,
        CONTRAIL_MAX_UPLOAD_BYTES=str(48 << 20),
        CONTRAIL_MAX_QUEUED_ITEMS="1000",
        CONTRAIL_RATE_LIMIT_PER_MINUTE="100000",
    ) as stack:
        yield stack


def nothing_stored(stack: Stack) -> None:
    assert stack.storage().list_keys("files/") == []


CASES = [
    # name, body, line, field, code
    ("malformed_json", f'{line(id="a")}\n{line(id="b")}\n{{"id": "c",\n', 3, None, "invalid_json"),
    ("wrong_type", f"{line(id='a')}\n{line(id=5)}\n", 2, "id", "invalid_item"),
    ("wrong_type_choices", f"{line(id='a', choices='yes')}\n", 1, "choices", "invalid_item"),
    (
        "missing_field",
        json.dumps({"id": "a", "answer": "yes"}) + "\n",
        1,
        "question",
        "invalid_item",
    ),
    ("answer_not_in_choices", f"{line(answer='maybe')}\n", 1, None, None),
    ("duplicate_id", f"{line(id='a')}\n{line(id='b')}\n{line(id='a')}\n", 3, "id", "duplicate_id"),
    ("not_an_object", f'{line(id="a")}\n"text"\n', 2, None, "invalid_item"),
]


@pytest.mark.parametrize(
    ("name", "body", "line_no", "field", "code"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_lines(
    vstack: Stack, name: str, body: str, line_no: int, field: str | None, code: str | None
) -> None:
    err = upload_error(vstack, body.encode())
    detail = err["details"][0]
    assert detail["line"] == line_no
    if field is not None:
        assert detail["field"] == field
    if code is not None:
        assert detail["code"] == code
    assert f"line {line_no}" in detail["message"]


def test_non_utf8_names_the_line(vstack: Stack) -> None:
    body = (line(id="a") + "\n").encode() + b'{"id": "b\xff\xfe", "question": "q"}\n'
    err = upload_error(vstack, body)
    assert err["details"][0]["line"] == 2
    assert err["details"][0]["code"] == "not_utf8"


def test_empty_file(vstack: Stack) -> None:
    err = upload_error(vstack, b"")
    assert err["details"][0]["code"] == "empty_input"
    err = upload_error(vstack, b"\n  \n\n")
    assert err["details"][0]["code"] == "empty_input"


def test_many_bad_lines_are_capped(vstack: Stack) -> None:
    err = upload_error(vstack, b"not json\n" * 500)
    assert len(err["details"]) == 100
    assert "500 invalid line(s)" in err["message"]


def test_bad_line_after_good_parts_deletes_them(vstack: Stack) -> None:
    body = items_jsonl(200) + b"{oops\n"
    err = upload_error(vstack, body)
    assert err["details"][0]["line"] == 201


def test_unknown_task(vstack: Stack) -> None:
    err = upload_error(vstack, items_jsonl(2), task="bogus")
    assert err["details"][0]["field"] == "task"


def test_oversized_body(vstack: Stack) -> None:
    body = items_jsonl(10) + b"x" * (48 << 20)  # > 48 MiB

    r = vstack.upload(body)
    assert r.status_code == 413, r.text
    assert "exceeds" in r.json()["error"]["message"]
    nothing_stored(vstack)

    def chunks() -> Iterator[bytes]:  # no Content-Length: caught while streaming
        for i in range(0, len(body), 1 << 16):
            yield body[i : i + (1 << 16)]

    with vstack.client() as c:
        r = c.post("/v1/files", content=chunks())
    assert r.status_code == 413
    nothing_stored(vstack)


def test_million_line_file_over_quota(vstack: Stack) -> None:
    one = b'{"id":"x%07d","question":"q","answer":"a"}\n'

    def million() -> Iterator[bytes]:
        block = 10_000
        for start in range(0, 1_000_000, block):
            yield b"".join(one % i for i in range(start, start + block))

    with httpx.Client(
        base_url=vstack.url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=120
    ) as c:
        r = c.post("/v1/files", content=million())
    # 1M lines (~45 MB, under the byte limit) but over the 1,000-item quota: the rest of the
    # body is drained unparsed and the upload answers 413 naming the quota
    assert r.status_code == 413, r.text
    assert "more than 1000 items" in r.json()["error"]["message"]
    nothing_stored(vstack)


def test_file_over_item_quota(vstack: Stack) -> None:
    r = vstack.upload(items_jsonl(1500))  # quota 1000 items, under the byte limit
    assert r.status_code == 413
    assert "more than 1000 items" in r.json()["error"]["message"]
    nothing_stored(vstack)


def test_job_validation(vstack: Stack) -> None:
    with vstack.client() as c:
        # no worker serves any model yet
        r = c.post("/v1/jobs", json={"items": [GOOD], "model": "tiny"})
        assert r.status_code == 422
        assert "no live worker serves model 'tiny'" in r.json()["error"]["message"]
        announce_worker(vstack, "tiny")
        r = c.post("/v1/jobs", json={"items": [GOOD], "model": "gpt-9"})
        assert r.status_code == 422 and "served: tiny" in r.json()["error"]["message"]
        r = c.post("/v1/jobs", json={"items": [GOOD], "model": "tiny", "task": "bogus"})
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "task"
        r = c.post(
            "/v1/jobs",
            json={"items": [GOOD], "model": "tiny", "decoding": {"lambda": 1.5}},
        )
        assert r.status_code == 422
        assert r.json()["error"]["details"][0]["field"] == "decoding.lambda"
        r = c.post("/v1/jobs", json={"items": [GOOD, GOOD], "model": "tiny"})
        assert r.status_code == 422
        assert r.json()["error"]["details"][0]["field"] == "items.1.id"
        r = c.post("/v1/jobs", json={"items": [{**GOOD, "id": 3}], "model": "tiny"})
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "items.0.id"
        r = c.post("/v1/jobs", json={"model": "tiny"})
        assert r.status_code == 422
        r = c.post("/v1/jobs", json={"input_file_id": "file_nope", "model": "tiny"})
        assert r.status_code == 404
        r = c.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422
        r = c.get("/v1/jobs", params={"limit": 0})
        assert r.status_code == 422
        r = c.get("/v1/jobs", params={"after": "job_unknown"})
        assert r.status_code == 400
    assert vstack.storage().list_keys("jobs/") == []


def test_concurrent_jobs_per_tenant(make_stack: Any) -> None:
    stack: Stack = make_stack(CONTRAIL_MAX_CONCURRENT_JOBS="2")
    announce_worker(stack, "tiny")
    with stack.client() as c:
        for i in range(2):
            r = c.post("/v1/jobs", json={"items": [{**GOOD, "id": f"j{i}"}], "model": "tiny"})
            assert r.status_code == 201, r.text
        r = c.post("/v1/jobs", json={"items": [{**GOOD, "id": "j2"}], "model": "tiny"})
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) > 0
    with stack.client(KEY_B) as c:  # the limit is the tenant's
        r = c.post("/v1/jobs", json={"items": [{**GOOD, "id": "b"}], "model": "tiny"})
        assert r.status_code == 201, r.text


def test_quota_and_rate_limit(make_stack: Any) -> None:
    stack: Stack = make_stack(
        CONTRAIL_MAX_QUEUED_ITEMS="3",
        CONTRAIL_RATE_LIMIT_PER_MINUTE="6",
        CONTRAIL_MAX_CONCURRENT_JOBS="5",
        # An hour-long window: the test's requests cannot straddle a window boundary (and
        # reset the count) the way they could a minute's.
        CONTRAIL_RATE_WINDOW_S="3600",
    )
    announce_worker(stack, "tiny")
    with stack.client() as c:
        items = [{**GOOD, "id": str(i)} for i in range(2)]
        assert c.post("/v1/jobs", json={"items": items, "model": "tiny"}).status_code == 201
        r = c.post("/v1/jobs", json={"items": items, "model": "tiny"})
        assert r.status_code == 429 and "queued-items quota" in r.json()["error"]["message"]
        assert int(r.headers["Retry-After"]) > 0
        for _ in range(5):
            r = c.post("/v1/jobs", json={"items": items[:1], "model": "tiny"})
        assert r.status_code == 429
        assert "rate limit" in r.json()["error"]["message"]
        assert int(r.headers["Retry-After"]) > 0
