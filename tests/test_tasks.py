"""Task loaders: real shared datasets, the QASC layout, generic Items and the bad-input matrix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from contrail.client.types import Item, ItemError, TaskName
from contrail.core.tasks.formats import LineParser, detect_format, load_items, parse_line
from tests.research_data import DATA

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def by_line(errors: list[ItemError]) -> dict[int | None, ItemError]:
    return {e.line: e for e in errors}


# ---------------------------------------------------------------- real datasets


@pytest.mark.parametrize(
    ("path", "task", "explanations", "fmt", "count"),
    [
        ("csqa/dev_rand_split.jsonl", TaskName.CSQA, "csqa/cose_dev_v1.0.jsonl", "csqa", 950),
        ("csqa/dev_v1.11.hf.jsonl", TaskName.CSQA, "csqa/cose_dev_v1.11.jsonl", "csqa_hf", 1221),
        ("strategyqa/dev.json", TaskName.STRATEGYQA, None, "strategyqa", 229),
        ("creak/dev.json", TaskName.CREAK, None, "creak", 1371),
    ],
)
def test_real_dev_sets_load_completely(
    path: str, task: TaskName, explanations: str | None, fmt: str, count: int
) -> None:
    result = load_items(DATA / path, task, explanations=explanations and DATA / explanations)
    assert result.errors == []
    assert result.format == fmt
    assert len(result.items) == count
    assert all(i.rationale for i in result.items)
    assert all(i.choices and i.answer in i.choices for i in result.items)


def test_csqa_v10_first_item_joins_cose() -> None:
    result = load_items(
        DATA / "csqa/dev_rand_split.jsonl",
        "csqa",
        explanations=DATA / "csqa/cose_dev_v1.0.jsonl",
    )
    assert result.items[0] == Item(
        id="26c8a7165d0ed7250b9328f90d83ba83",
        question="Why do people who are dying receive social security payments?",
        answer="unable to work",
        choices=["born again", "unable to work", "no longer exist"],
        rationale="Unable to work people who are dying receive social security payment",
    )


def test_csqa_v111_has_five_choices_and_repeated_options_are_merged() -> None:
    items = load_items(DATA / "csqa/dev_v1.11.hf.jsonl", TaskName.CSQA).items
    assert items[0].choices == ["bank", "library", "department store", "mall", "new york"]
    assert items[0].answer == "bank" and items[0].rationale is None  # no CoS-E given
    # Line 23 lists "indestructible" twice (answerKey D is the repeat): kept once, still gold.
    repeated = next(i for i in items if i.id == "e5ad2184e37ae88b2bf46bf6bc0ed2f4")
    assert repeated.choices == ["indestructible", "durable", "undestroyable", "unbreakable"]
    assert repeated.answer == "indestructible"


def test_strategyqa_joins_facts_and_maps_bool_to_yes_no() -> None:
    first = load_items(DATA / "strategyqa/dev.json", TaskName.STRATEGYQA).items[0]
    assert first.id == "e0044a7b4d146d611e73"
    assert first.answer == "no" and first.choices == ["yes", "no"]
    # The facts lack final periods; each gets one so they do not run together.
    assert (
        first.rationale
        == "Albany, GA has around 75,000 people. Albany, NY has almost 100,000 people."
    )


def test_creak_first_item() -> None:
    first = load_items(DATA / "creak/dev.json", TaskName.CREAK).items[0]
    assert first == Item(
        id="dev_0",
        question="Eating soup means eating only solids.",
        answer="false",
        choices=["true", "false"],
        rationale="Soup is mainly liquid sometimes with bits of food inside.",
    )


# ---------------------------------------------------------------- QASC and generic


def test_qasc_fixture() -> None:
    # tests/fixtures/qasc_sample.jsonl was written by hand in the official QASC layout (QASC's
    # own files are not available offline); see tests/fixtures/README.md.
    result = load_items(FIXTURES / "qasc_sample.jsonl", TaskName.QASC)
    assert result.errors == [] and result.format == "qasc"
    assert [i.id for i in result.items] == [f"qasc-hand-{n}" for n in range(1, 5)]
    assert all(len(i.choices or []) == 8 for i in result.items)
    first = result.items[0]
    assert first.answer == "sunlight"
    assert (
        first.rationale == "Plants make food by photosynthesis. Photosynthesis requires sunlight."
    )
    assert result.items[2].answer == "cooling"


def test_generic_lines_are_items() -> None:
    lines = [
        '{"id": "g1", "question": "Capital of France?", "answer": "Paris", '
        '"wrong_answers": ["Rome"]}',
        '{"id": "g2", "question": "2+2?", "answer": "4", "choices": ["3", "4", "5"], '
        '"rationale": "Two plus two is four."}',
    ]
    result = load_items(lines, TaskName.GENERIC)
    assert result.errors == [] and result.format == "generic"
    assert result.items[0] == Item(
        id="g1", question="Capital of France?", answer="Paris", wrong_answers=["Rome"]
    )
    assert result.items[1].choices == ["3", "4", "5"]


def test_format_detection() -> None:
    assert detect_format({"id": "x", "question": {"stem": "q", "choices": []}}) == "csqa"
    assert detect_format({"id": "x", "question": {"stem": "q"}, "fact1": "f"}) == "qasc"
    assert detect_format({"id": "x", "choices": {"label": []}, "answerKey": "A"}) == "csqa_hf"
    assert detect_format({"qid": "x", "facts": []}) == "strategyqa"
    assert detect_format({"ex_id": "x", "sentence": "s"}) == "creak"
    assert detect_format({"id": "x", "question": "q", "answer": "a"}) == "generic"


def test_bytes_and_bom_input() -> None:
    content = b'\xef\xbb\xbf{"id": "a", "question": "q?", "answer": "x"}\n'
    assert [i.id for i in load_items(content, "generic").items] == ["a"]


# ---------------------------------------------------------------- bad input


def test_generic_bad_input_matrix(tmp_path: Path) -> None:
    lines = [
        b'{"id": "ok1", "question": "q1?", "answer": "a", "choices": ["a", "b"]}',  # 1 good
        b'{"id": "m", "answer": "a"}',  # 2 missing question
        b'{"id": "n", "question": "q?", "answer": "z", "choices": ["a", "b"]}',  # 3 not in choices
        b'{"id": "j", "question": "q?", ',  # 4 malformed JSON
        b'{"id": "u", "question": "caf\xe9?", "answer": "a"}',  # 5 Latin-1, not UTF-8
        b"",  # 6 blank: skipped silently
        b'{"id": "ok1", "question": "again?", "answer": "a"}',  # 7 duplicate id
        b'{"id": "c", "question": "q?", "answer": "a", "choices": ["a"]}',  # 8 one choice
        b'{"id": "x", "question": "q?", "answer": "a", "colour": "red"}',  # 9 unknown field
        b'{"id": "ok2", "question": "q2?", "answer": "b"}',  # 10 good
    ]
    path = tmp_path / "items.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = load_items(path, TaskName.GENERIC)

    assert [i.id for i in result.items] == ["ok1", "ok2"]
    errors = by_line(result.errors)
    assert sorted(k for k in errors if k is not None) == [2, 3, 4, 5, 7, 8, 9]
    expected = {
        2: ("invalid_item", "question"),
        3: ("answer_not_in_choices", "answer"),
        4: ("invalid_json", None),
        5: ("not_utf8", None),
        7: ("duplicate_id", "id"),
        8: ("invalid_item", "choices"),
        9: ("invalid_item", "colour"),
    }
    for line, (code, field) in expected.items():
        assert (errors[line].code, errors[line].field) == (code, field), errors[line]
        assert errors[line].message
    assert errors[7].item_id == "ok1" and "line 7" in errors[7].message


def test_native_bad_lines_name_native_fields() -> None:
    good = {
        "answerKey": "A",
        "id": "c1",
        "question": {
            "stem": "q?",
            "choices": [{"label": "A", "text": "x"}, {"label": "B", "text": "y"}],
        },
    }
    no_stem = json.loads(json.dumps(good)) | {"id": "c2"}
    del no_stem["question"]["stem"]
    bad_key = good | {"id": "c3", "answerKey": "Z"}
    no_key = {k: v for k, v in good.items() if k != "answerKey"} | {"id": "c4"}
    lines = [json.dumps(r) for r in (good, no_stem, bad_key, no_key)]
    result = load_items(lines, TaskName.CSQA, "csqa")
    assert [i.id for i in result.items] == ["c1"]
    errors = by_line(result.errors)
    assert (errors[2].code, errors[2].field, errors[2].item_id) == (
        "invalid_item",
        "question.stem",
        "c2",
    )
    assert (errors[3].code, errors[3].field) == ("answer_not_in_choices", "answerKey")
    assert (errors[4].code, errors[4].field) == ("invalid_item", "answerKey")


def test_creak_bad_label_and_strategyqa_list_line_numbers(tmp_path: Path) -> None:
    creak = [
        '{"ex_id": "c1", "sentence": "S.", "explanation": "E.", "label": "true"}',
        '{"ex_id": "c2", "sentence": "S.", "explanation": "E.", "label": "maybe"}',
    ]
    result = load_items(creak, TaskName.CREAK)
    assert [i.id for i in result.items] == ["c1"]
    assert (result.errors[0].line, result.errors[0].field) == (2, "label")
    assert result.errors[0].code == "answer_not_in_choices"

    records = [
        {"qid": "s1", "question": "Q1?", "answer": True, "facts": ["F."]},
        {"qid": "s2", "answer": False, "facts": ["F."]},
        {"qid": "s3", "question": "Q3?", "answer": "no", "facts": ["F."]},
        {"qid": "s4", "question": "Q4?", "answer": False, "facts": ["F."]},
    ]
    path = tmp_path / "strategyqa.json"
    path.write_text(json.dumps(records, indent=4))
    result = load_items(path, TaskName.STRATEGYQA)
    assert [i.id for i in result.items] == ["s1", "s4"]
    # indent=4: "[" on line 1, then 8 lines per record (7 for s2, which lacks its question).
    assert [(e.line, e.field, e.code) for e in result.errors] == [
        (10, "question", "invalid_item"),
        (17, "answer", "invalid_item"),
    ]


def test_malformed_json_list_reports_where_it_broke() -> None:
    text = '[\n {"qid": "s1", "question": "Q?", "answer": true, "facts": []},\n {"qid": \n]'
    result = load_items([text], TaskName.STRATEGYQA)
    assert [i.id for i in result.items] == ["s1"]
    assert (result.errors[0].code, result.errors[0].line) == ("invalid_json", 3)


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_input(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    result = load_items(path, TaskName.GENERIC)
    assert result.items == []
    assert [e.code for e in result.errors] == ["empty_input"]


def test_unknown_task_and_format() -> None:
    result = load_items(["{}"], "chess")
    assert [(e.code, e.field) for e in result.errors] == [("unknown_task", "task")]
    assert "chess" in result.errors[0].message
    result = load_items(["{}"], TaskName.CSQA, "xml")
    assert [(e.code, e.field) for e in result.errors] == [("unsupported_format", "format")]


def test_format_that_cannot_feed_the_task_is_one_error() -> None:
    lines = [json.dumps({"ex_id": f"c{n}", "sentence": "S.", "label": "true"}) for n in range(5)]
    result = load_items(lines, TaskName.CSQA)
    assert result.items == []
    assert [(e.code, e.line) for e in result.errors] == [("unsupported_format", 1)]


def test_parse_line_for_streaming_validation() -> None:
    item = parse_line('{"id": "a", "question": "q?", "answer": "x"}', TaskName.GENERIC)
    assert isinstance(item, Item) and item.id == "a"
    error = parse_line(b'{"id": 1, "question": "q?", "answer": "x"}', TaskName.GENERIC, line_no=7)
    assert isinstance(error, ItemError)
    assert (error.line, error.field, error.code) == (7, "id", "invalid_item")
    assert parse_line("   ", TaskName.GENERIC) is None

    parser = LineParser(TaskName.GENERIC)
    first = parser.parse('{"id": "a", "question": "q?", "answer": "x"}', 1)
    again = parser.parse('{"id": "a", "question": "q?", "answer": "x"}', 2)
    assert isinstance(first, Item)
    assert isinstance(again, ItemError) and again.code == "duplicate_id"


def test_task_modules_import_without_torch() -> None:
    code = (
        "import sys, contrail.core.tasks.formats, contrail.core.tasks.prompts, "
        "contrail.core.tasks.demos, contrail.core.tasks.perturb, "
        "contrail.worker.generation.pipeline\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
