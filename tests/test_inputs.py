"""Inputs as users bring them, through the real API and SDK (no worker: a declared model takes
the jobs): native files (JSON arrays, gzip, Parquet), records and DataFrames from Python,
prompt templates, and the limits that keep a request from costing more than its size."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contrail.client import Client, UnprocessableEntityError
from contrail.testing.stack import KEY_A, Stack, running_stack, upload_error

ROOT = Path(__file__).resolve().parents[1]
STRATEGYQA = ROOT / "examples" / "strategyqa-dev-20.json"
MAX_LINE = 16_384
MAX_DECOMPRESSED = 4 << 20
GOOD = {"id": "a", "question": "Is the sky blue?", "answer": "yes", "choices": ["yes", "no"]}


@pytest.fixture(scope="module")
def istack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    s3 = request.getfixturevalue("s3_server")
    tmp = tmp_path_factory.mktemp("inputs")
    with running_stack(
        tmp,
        s3,
        tmp,
        CONTRAIL_DECLARED_MODELS="tiny, contrail-test/tiny@main",
        CONTRAIL_MAX_LINE_BYTES=str(MAX_LINE),
        CONTRAIL_MAX_DECOMPRESSED_BYTES=str(MAX_DECOMPRESSED),
        CONTRAIL_RATE_LIMIT_PER_MINUTE="100000",
    ) as stack:
        yield stack


@pytest.fixture
def client(istack: Stack) -> Iterator[Client]:
    with Client(api_key=KEY_A, base_url=istack.url, max_retries=0) as c:
        yield c


def strategyqa_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(STRATEGYQA.read_text())
    return rows


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    keep = ("qid", "question", "answer", "facts")
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{k: r[k] for k in keep if k in r} for r in rows]), buf)
    return buf.getvalue()


# ------------------------------------------------------------------------ native files, records


def test_native_files_and_records_upload_as_they_are(
    istack: Stack, client: Client, tmp_path: Path
) -> None:
    rows = strategyqa_rows()
    gz = tmp_path / "strategyqa.json.gz"
    gz.write_bytes(gzip.compress(STRATEGYQA.read_bytes()))
    parquet = tmp_path / "strategyqa.parquet"
    parquet.write_bytes(parquet_bytes(rows))
    jsonl_gz = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())

    def one_shot() -> Iterator[dict[str, Any]]:
        yield from rows

    import datasets
    import pandas as pd

    frame = pd.DataFrame([{k: r[k] for k in ("qid", "question", "answer", "facts")} for r in rows])
    sources: list[tuple[str, Any, str, str | None]] = [
        ("array path", STRATEGYQA, "json", None),
        ("gzip array path", gz, "json", "gzip"),
        ("parquet path", parquet, "parquet", None),
        ("gzip jsonl bytes", jsonl_gz, "jsonl", "gzip"),
        ("array file object", io.BytesIO(STRATEGYQA.read_bytes()), "json", None),
        ("list of dicts", rows, "jsonl", None),
        ("generator of dicts", one_shot(), "jsonl", None),
        ("pandas DataFrame", frame, "jsonl", None),
        ("datasets.Dataset", datasets.Dataset.from_pandas(frame), "jsonl", None),
    ]
    for name, source, container, compression in sources:
        try:
            f = client.files.upload(source, task="strategyqa")
        except UnprocessableEntityError as exc:
            raise AssertionError(f"{name}: {exc.details}") from None
        got = (f.lines, f.format, f.container, f.compression)
        assert got == (20, "strategyqa", container, compression), name

    # Exact totals come from the ids written at upload, in input order, for every container:
    # a job over the Parquet file owes one rationale per item plus the counterfactuals picked.
    f = client.files.upload(parquet, task="strategyqa")
    job = client.jobs.create(
        input_file_id=f.id, task="strategyqa", model="tiny", decoding={"counterfactual_fraction": 1}
    )
    assert job.request_counts.total == 40
    stored = istack.storage().read_lines(f"files/{f.id}/ids/000000.txt")
    assert [i.decode() for i in stored] == [r["qid"] for r in rows]


def test_bad_records_are_named_by_line_or_record(istack: Stack) -> None:
    rows = strategyqa_rows()[:5]
    bad = [*rows[:2], {k: v for k, v in rows[2].items() if k != "question"}, *rows[3:]]
    for body, name in [(json.dumps(bad).encode(), "bad.json"), (parquet_bytes(bad), "bad.pq")]:
        err = upload_error(istack, body, filename=name)
        assert err["details"][0]["record"] == 3 and err["details"][0]["field"] == "question"
        assert err["details"][0]["message"].startswith("record 3: ")

    lines = "".join(json.dumps(r) + "\n" for r in [*rows[:3], {**rows[0]}])
    err = upload_error(istack, gzip.compress(lines.encode()), filename="dup.jsonl.gz")
    assert err["details"][0] == {
        "line": 4,
        "record": None,
        "field": "id",
        "code": "duplicate_id",
        "message": f"line 4: id {rows[0]['qid']!r} already appeared at line 1",
    }

    truncated = b'[{"qid": "x", "question": "q", "answer": true}, {"qid":'
    err = upload_error(istack, truncated, filename="x.json")
    assert err["details"][-1]["record"] == 2 and err["details"][-1]["code"] == "invalid_json"

    err = upload_error(istack, json.dumps(rows).encode(), filename="named.parquet")
    assert "not Parquet" in err["message"]
    err = upload_error(istack, gzip.compress(b"x" * 100)[:-8], filename="truncated.jsonl.gz")
    assert err["details"][0]["code"] == "invalid_gzip"


# ------------------------------------------------------------------------ parsing limits


def test_json_limits_are_line_errors_never_500(istack: Stack) -> None:
    ok = json.dumps(GOOD)
    strategy = json.dumps(strategyqa_rows()[0])
    cases = [
        ("too_deep", "[" * 5000 + "]" * 5000),
        ("number_too_large", '{"id": ' + "9" * 6000 + "}"),
        ("invalid_json", strategy[:-1] + ', "score": NaN}'),
        ("invalid_json", strategy[:-1] + ', "score": -Infinity}'),
        ("invalid_json", json.dumps({**GOOD, "question": "x"}).replace('"x"', '"\\ud800"')),
        ("invalid_json", "\ufeff" + ok),  # a byte-order mark is only allowed before line 1
        ("line_too_long", json.dumps({**GOOD, "question": "q" * MAX_LINE})),
    ]
    for code, bad in cases:
        first = ok if code != "invalid_json" or "score" not in bad else strategy
        body = f"{first}\n{bad}\n{json.dumps({**GOOD, 'id': 'z'})}\n".encode()
        err = upload_error(istack, body)
        assert err["details"][0]["line"] == 2, (code, err)
        assert err["details"][0]["code"] == code, (code, err)
    # a leading byte-order mark and CRLF line ends are fine
    with istack.client() as c:
        body = ("\ufeff" + ok + "\r\n" + json.dumps({**GOOD, "id": "b"}) + "\r\n").encode()
        r = c.post("/v1/files", content=body)
    assert r.status_code == 201 and r.json()["lines"] == 2, r.text


def _raw_post(url: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """Send the headers and part of a body on a plain socket; the status the server answers
    with while most of the body is still unsent."""
    parsed = urlparse(url)
    head = f"POST {path} HTTP/1.1\r\nHost: {parsed.hostname}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    with socket.create_connection((parsed.hostname, parsed.port), timeout=5) as sock:
        sock.sendall(head.encode() + b"\r\n")
        with contextlib.suppress(OSError):  # the server may already have answered and closed
            sock.sendall(body)
        reply = b""
        while not _complete(reply):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    return int(reply.split(b" ", 2)[1]), reply


def _complete(reply: bytes) -> bool:
    """Headers and the whole body by Content-Length: the body may come in a later packet."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return match is None or len(body) >= int(match.group(1))


def test_request_size_limits_before_parsing_and_auth(istack: Stack) -> None:
    # 300 MB declared, 64 KiB sent, no credentials: 413 at once, nothing buffered
    huge = {"Content-Type": "application/json", "Content-Length": str(300 << 20)}
    status, reply = _raw_post(istack.url, "/v1/jobs", huge, b"{" + b" " * (64 << 10))
    assert status == 413, reply
    assert b"payload_too_large" in reply
    # a chunked body (no Content-Length) is counted while read: 413 past the route's limit
    body = json.dumps({"items": [GOOD], "model": "tiny", "metadata": {"k": "v" * (6 << 20)}})

    def chunks() -> Iterator[bytes]:
        data = body.encode()
        for i in range(0, len(data), 1 << 16):
            yield data[i : i + (1 << 16)]

    with istack.client() as c:
        r = c.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["type"] == "payload_too_large"
    # a Content-Length that is not a number: 400 before anything is read (uvicorn's parser
    # answers it; the API's own check covers servers that pass it on)
    bad = {"Content-Type": "application/json", "Content-Length": "12abc"}
    status, reply = _raw_post(istack.url, "/v1/jobs", bad, b"{}")
    assert status == 400, reply
    # a small gzip body that decompresses past the limit: 413 once the limit is passed
    bomb = gzip.compress(b"\n" * (MAX_DECOMPRESSED + (1 << 20)), compresslevel=9)
    assert len(bomb) < 64 << 10
    r = istack.upload(bomb)
    assert r.status_code == 413, r.text
    assert f"exceeds {MAX_DECOMPRESSED} bytes" in r.json()["error"]["message"]


def test_wire_strings_have_limits(istack: Stack) -> None:
    with istack.client() as c:

        def create(**body: Any) -> httpx.Response:
            return c.post("/v1/jobs", json={"items": [GOOD], "model": "tiny", **body})

        for body, field in [
            ({"metadata": {"k": "v" * 513}}, "metadata.k"),
            ({"metadata": {"k" * 65: "v"}}, f"metadata.{'k' * 65}.[key]"),
            ({"items": [{**GOOD, "question": "q" * 40_000}]}, "items.0.question"),
            ({"items": [{**GOOD, "id": f"{i}"} for i in range(1001)]}, "items"),
            ({"model": "no spaces or:colons"}, "model"),
            ({"input_file_id": "f" * 300, "items": None}, "input_file_id"),
            ({"demonstrations": [{"question": "q", "answer": "a" * 3000, "rationale": "r"}]}, None),
            (
                {"demonstrations": [{"question": "q", "answer": "a", "rationale": "r"}] * 17},
                "demonstrations",
            ),
            ({"decoding": {"stop": ["s"] * 9}}, "decoding.stop"),
            ({"decoding": {"stop": ["s" * 33]}}, "decoding.stop.0"),
            ({"decoding": {"seed": 2**63}}, "decoding.seed"),
            ({"decoding": {"seed": -(2**63) - 1}}, "decoding.seed"),
            (
                {"items": [{**GOOD, "choices": [f"c{i}" for i in range(65)], "answer": "c0"}]},
                "items.0.choices",
            ),
            ({"items": [{**GOOD, "choices": ["yes", "n" * 2049]}]}, "items.0.choices.1"),
        ]:
            r = create(**body)
            assert r.status_code == 422, (str(body)[:200], r.text)
            if field is not None:
                assert r.json()["error"]["details"][0]["field"] == field, r.text
        # the Idempotency-Key header: 256 characters
        r = c.post(
            "/v1/jobs",
            json={"items": [GOOD], "model": "tiny"},
            headers={"Idempotency-Key": "k" * 257},
        )
        assert r.status_code == 422, r.text
        assert "idempotency" in r.text.lower()


# ------------------------------------------------------------------------ templates, models


def test_templates_are_validated_and_recorded(istack: Stack, client: Client) -> None:
    template = "Claim: {question}\nVerdict: {answer}."
    job = client.jobs.create(items=[GOOD], model="tiny", template=template)
    assert client.jobs.retrieve(job.id).template == template
    for bad, words in [
        ("Claim: {question} {bogus}", "unknown placeholders"),
        ("Claim: {question}", "{answer} exactly once"),
        ("{question} {answer} ", "must not end with whitespace"),
        ("{question {answer}", "not a valid format string"),
        # Padding to a billion characters once cost the API 1 GB and OOM-killed workers.
        ("Q: {question:>999999999}\nA: {answer}.", "format spec or conversion"),
        ("Q: {question!r}\nA: {answer}.", "format spec or conversion"),
    ]:
        with pytest.raises(UnprocessableEntityError) as info:
            client.jobs.create(items=[GOOD], model="tiny", template=bad)
        assert words in info.value.message
        assert info.value.details[0].field == "template"


def test_declared_models_accept_jobs_without_a_worker(istack: Stack, client: Client) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) >= {"tiny", "contrail-test/tiny@main"}
    assert models["tiny"].declared and models["tiny"].workers == 0
    before = models["contrail-test/tiny@main"].backlog
    items = [{**GOOD, "id": f"d{i}"} for i in range(20)]  # 3 shards of 8
    job = client.jobs.create(items=items, model="contrail-test/tiny@main")
    assert job.status.value == "in_progress"
    after = {m.id: m for m in client.models.list().data}["contrail-test/tiny@main"]
    assert after.backlog == before + 3
    with pytest.raises(UnprocessableEntityError) as info:
        client.jobs.create(items=items, model="org/never-served")
    assert "does not declare it" in info.value.message
