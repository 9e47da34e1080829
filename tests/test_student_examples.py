"""What a student learns from each record (contrail.distill.student.examples), tokenized with the
tiny model's tokenizer, and the seeded rationale perturbation of its evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from contrail.client.types import Tag, TaskName
from contrail.distill.student.examples import IGNORE, build_examples, encode, split_records
from contrail.distill.student.perturb import perturb_tokens
from tests.test_evaluation import make_record
from tests.test_export_adapters import _records

CHOICES = ["drawer", "garage", "roof"]
MC = {"task": TaskName.CSQA, "question": "Where is a fork kept?", "choices": CHOICES}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def _decode(tokenizer: object, ids: list[int]) -> str:
    return tokenizer.decode(ids)  # type: ignore[attr-defined, no-any-return]


def test_a_counterfactual_row_learns_exactly_its_answer_and_eos(tokenizer: object) -> None:
    counter = make_record(
        "c0", "Forks sit on the roof.", answer="roof", gold="drawer", tag=Tag.COUNTERFACTUAL,
        contrast="drawer", **MC,  # type: ignore[arg-type]
    )  # fmt: skip
    ex = encode(tokenizer, counter, "scott")  # type: ignore[arg-type]
    assert ex is not None and ex.kind == "counterfactual"
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    answer = tokenizer.encode(" roof", add_special_tokens=False)  # type: ignore[attr-defined]
    # Exactly the answer's tokens and the end-of-text token, at the end of the row; the
    # rationale (and everything before it) is given, never learned.
    assert ex.learned == [*answer, eos]
    assert ex.labels[-len(ex.learned) :] == ex.input_ids[-len(ex.learned) :]
    assert set(ex.labels[: -len(ex.learned)]) == {IGNORE}
    given = _decode(tokenizer, ex.input_ids[: -len(ex.learned)])
    assert given.endswith("[counterfactual] Forks sit on the roof. So the answer is")
    # The other objectives do not learn from counterfactual rows at all.
    assert encode(tokenizer, counter, "factual") is None  # type: ignore[arg-type]
    assert encode(tokenizer, counter, "answer") is None  # type: ignore[arg-type]


def test_a_factual_row_learns_its_whole_target(tokenizer: object) -> None:
    factual = make_record("c0", "Forks go in a drawer.", answer="drawer", **MC)  # type: ignore[arg-type]
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    for objective, target in (
        ("scott", "[factual] Forks go in a drawer. So the answer is drawer"),
        ("factual", "[factual] Forks go in a drawer. So the answer is drawer"),
        ("answer", "[factual] So the answer is drawer"),  # no rationale
    ):
        ex = encode(tokenizer, factual, objective)  # type: ignore[arg-type]
        assert ex is not None and ex.kind == "factual"
        assert ex.learned[-1] == eos
        assert _decode(tokenizer, ex.learned[:-1]) == target, objective
        prompt = _decode(tokenizer, ex.input_ids[: len(ex.input_ids) - len(ex.learned)])
        assert prompt == "[factual] Where is a fork kept? \\n (A) drawer (B) garage (C) roof\n"


def test_rows_over_the_length_bound_are_left_out_whole(tokenizer: object) -> None:
    long = make_record("c1", "word " * 400, answer="drawer", **MC)  # type: ignore[arg-type]
    short = make_record("c2", "Forks go in a drawer.", answer="drawer", **MC)  # type: ignore[arg-type]
    built = build_examples([long, short], tokenizer, "factual", max_tokens=128)  # type: ignore[arg-type]
    assert [e.item_id for e in built.examples] == ["c2"]
    assert built.too_long == 1


def test_the_split_keeps_an_items_rows_together() -> None:
    records = _records(40)
    for seed in (0, 1, 2):
        parts = split_records(records, dev_fraction=0.3, seed=seed)
        train = {r.item_id for r in parts["train"]}
        dev = {r.item_id for r in parts["dev"]}
        assert train and dev and not train & dev
        assert len(parts["train"]) + len(parts["dev"]) == len(records)
        # Items with a counterfactual row have both rows on one side.
        for side in parts.values():
            ids = {r.item_id for r in side}
            assert all(r.item_id in ids for r in records if r.item_id in ids)
    assert split_records(records, dev_fraction=0.3, seed=0) != split_records(
        records, dev_fraction=0.3, seed=1
    )


def test_the_perturbation_is_reproducible_by_seed() -> None:
    tokens = list(range(100, 140))
    a = perturb_tokens(tokens, vocab_size=500, item_id="x", seed=3)
    assert a == perturb_tokens(tokens, vocab_size=500, item_id="x", seed=3)
    assert sum(x != y for x, y in zip(a, tokens, strict=True)) <= 20  # half the positions drawn
    assert sum(x != y for x, y in zip(a, tokens, strict=True)) >= 15  # (a draw may hit itself)
    assert a != perturb_tokens(tokens, vocab_size=500, item_id="x", seed=4)
    assert a != perturb_tokens(tokens, vocab_size=500, item_id="y", seed=3)
    kept = perturb_tokens(tokens, vocab_size=3, item_id="x", seed=3, keep=frozenset({0, 1}))
    assert {t for t, o in zip(kept, tokens, strict=True) if t != o} == {2}
    assert perturb_tokens(tokens, vocab_size=500, item_id="x", seed=3, fraction=0.0) == tokens


@pytest.mark.parametrize("objective", ["scott", "factual", "answer"])
def test_an_export_row_teaches_what_its_record_teaches(tokenizer: object, objective: str) -> None:
    # `contrail train` on the student export must learn exactly what it learns from the dataset
    # the export was made from: the same tokens, the same mask, the same split.
    from contrail.distill.export import to_student_rows

    records = _records(8)
    rows = to_student_rows(records)
    assert len(rows) == len(records) and any(r.tag == "counterfactual" for r in rows)
    for record, row in zip(records, rows, strict=True):
        assert encode(tokenizer, row, objective) == encode(tokenizer, record, objective)  # type: ignore[arg-type]
        start = tokenizer.eos_token_id  # type: ignore[attr-defined]  # any decoder start
        assert encode(tokenizer, row, objective, decoder_start=start) == encode(  # type: ignore[arg-type]
            tokenizer,
            record,
            objective,
            decoder_start=start,  # type: ignore[arg-type]
        )
    # Both are the TRL export's prompt/completion, which the adapters write.
    from contrail.distill.adapters import prompt_completion
    from contrail.distill.student.examples import texts

    if objective == "scott":
        for record, row in zip(records, rows, strict=True):
            assert texts(record, "scott") == texts(row, "scott") == prompt_completion(record)
    # A counterfactual row whose target does not end with its answer is refused, not learned.
    bad = next(r for r in rows if r.tag == "counterfactual").model_copy(update={"answer": "x"})
    with pytest.raises(ValueError, match="does not end with its answer"):
        texts(bad, "scott")
    by_rows = split_records(rows, dev_fraction=0.3, seed=1)
    by_records = split_records(records, dev_fraction=0.3, seed=1)
    for split in ("train", "dev"):
        assert [r.item_id for r in by_rows[split]] == [r.item_id for r in by_records[split]]
