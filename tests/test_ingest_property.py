"""Property: whatever bytes or JSON an upload holds, parsing yields items or record-level errors
(or, for the upload as a whole, UploadRejected), never another exception, and every error names
its line or record."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contrail.client.types import Item, ItemError, TaskName
from contrail.core.tasks.formats import LineParser
from contrail.service.ingest import IngestParser, UploadRejected

TASKS = list(TaskName)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["id", "qid", "question", "answer", "choices", "facts", "label"])
            | st.text(max_size=6),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)

# Near-valid records, so validation paths past JSON decoding are reached too.
records = st.fixed_dictionaries(
    {
        "id": st.text(max_size=4) | st.integers(),
        "question": st.text(max_size=8),
        "answer": st.sampled_from(["yes", "no", ""]) | st.text(max_size=3),
    },
    optional={
        "choices": st.lists(st.text(max_size=3), max_size=4) | json_values,
        "wrong_answers": json_values,
        "rationale": json_values,
        "qid": json_values,
        "facts": json_values,
        "ex_id": json_values,
        "sentence": json_values,
        "label": json_values,
    },
)

NASTY = [
    b"[" * 5000 + b"]" * 5000,
    b'{"id": ' + b"9" * 6000 + b"}",
    b'{"id": "a", "question": "q", "answer": "a", "x": NaN}',
    b'{"id": "\\ud800", "question": "q", "answer": "a"}',
    b"\xef\xbb\xbf\xef\xbb\xbf{}",
    b'{"a": 1e999}',
]


def _check(result: Item | ItemError | None, line_no: int) -> None:
    if isinstance(result, ItemError):
        assert result.line == line_no and result.message.startswith(f"line {line_no}: ")
    else:
        assert result is None or isinstance(result, Item)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=300), task=st.sampled_from(TASKS))
@example(raw=NASTY[0], task=TaskName.GENERIC)
@example(raw=NASTY[1], task=TaskName.GENERIC)
@example(raw=NASTY[3], task=TaskName.GENERIC)
def test_line_parser_on_any_bytes(raw: bytes, task: TaskName) -> None:
    _check(LineParser(task).parse(raw, 2), 2)


@settings(max_examples=300, deadline=None)
@given(value=json_values | records, task=st.sampled_from(TASKS))
def test_line_parser_on_any_json(value: Any, task: TaskName) -> None:
    parser = LineParser(task)
    _check(parser.parse(json.dumps(value), 3), 3)
    _check(parser.parse(json.dumps(value, ensure_ascii=False).encode("utf-8", "replace"), 4), 4)
    result = parser.parse_value(value, 5)
    assert isinstance(result, Item | ItemError)


def _ingest(data: bytes, cuts: list[int], filename: str | None) -> None:
    parser = IngestParser(TaskName.GENERIC, filename=filename, max_line_bytes=2048)
    pieces, last = [], 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    try:
        batches = [b for piece in pieces for b in parser.feed(piece)]
        batches += list(parser.finish())
    except UploadRejected as exc:
        assert exc.status in (413, 422) and exc.message
        return
    finally:
        parser.close()
    for batch in batches:
        for error in batch.errors:
            assert (error.line or error.record) and error.code and error.message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=400)
    | st.lists(json_values | records, max_size=6).map(lambda v: json.dumps(v).encode())
    | st.lists(json_values | records, max_size=6).map(
        lambda v: "\n".join(json.dumps(x) for x in v).encode()
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=4),
    filename=st.sampled_from([None, "x.jsonl", "x.json", "x.parquet", "x.gz"]),
)
@example(body=b"[" + NASTY[0] + b"]", cuts=[3], filename=None)
@example(body=b"\x1f\x8b" + bytes(50), cuts=[], filename=None)
@example(body=b"PAR1" + bytes(50), cuts=[2], filename=None)
def test_upload_parser_on_any_body(body: bytes, cuts: list[int], filename: str | None) -> None:
    _ingest(body, cuts, filename)
