"""Perturbations, counterfactual selection and the plan -> engine -> records round trip."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import pytest

from contrail.client.types import (
    DecodingMode,
    DecodingSettings,
    Demonstration,
    ErrorCode,
    FinishReason,
    Item,
    ItemError,
    Perturbation,
    RationaleRecord,
    RecordDecoding,
    Tag,
    TaskName,
)
from contrail.core.tasks.formats import load_items
from contrail.core.tasks.perturb import (
    PerturbationError,
    contrast_answer,
    counterfactual_answer,
    is_counterfactual,
    pick_wrong_answer,
)
from contrail.worker.engine.base import DecodeRequest, DecodeResult, Engine, EngineStats
from contrail.worker.generation.item_errors import MESSAGES
from contrail.worker.generation.pipeline import (
    error_code,
    generate,
    plan,
    request_id,
    split_request_id,
    to_records,
)
from tests.research_data import DATA

MC = Item(id="mc", question="Pick one?", answer="b", choices=["a", "b", "c", "d"])
FREE = Item(
    id="free", question="Capital of France?", answer="Paris", wrong_answers=["Rome", "Oslo"]
)
BARE = Item(id="bare", question="Capital of Spain?", answer="Madrid")


class FakeEngine(Engine):
    """Deterministic stand-in: the rationale names the request; 'too-long' items fail."""

    def __init__(self) -> None:
        self.model_name = "fake-model"
        self.max_model_len = 4096
        self.stats = EngineStats()
        self.batches: list[list[DecodeRequest]] = []

    def generate(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        self.batches.append(list(requests))
        return [self._one(r) for r in requests]

    def _one(self, r: DecodeRequest) -> DecodeResult:
        if r.request_id.startswith("too-long"):
            return DecodeResult(
                r.request_id,
                [],
                "",
                FinishReason.ERROR,
                error="prompt_too_long: 5000 > 4096 tokens",
            )
        contrastive = r.neg_prompt is not None
        return DecodeResult(
            request_id=r.request_id,
            token_ids=[1, 2, 3],
            text=f" Rationale for {r.request_id} (contrastive={contrastive}).\n",
            finish_reason=FinishReason.STOP,
            prompt_tokens=len(r.pos_prompt) + len(r.neg_prompt or ""),
            completion_tokens=3,
            continuations=1 if contrastive else 0,
        )


# ---------------------------------------------------------------- perturbations


def test_wrong_answer_is_another_choice_and_reproducible() -> None:
    items = load_items(DATA / "csqa/dev_v1.11.hf.jsonl", TaskName.CSQA).items
    picks = [pick_wrong_answer(i, TaskName.CSQA, seed=0) for i in items]
    assert all(w != i.answer and w in (i.choices or []) for w, i in zip(picks, items, strict=True))
    assert picks == [pick_wrong_answer(i, TaskName.CSQA, seed=0) for i in items]
    other_seed = [pick_wrong_answer(i, TaskName.CSQA, seed=1) for i in items]
    assert 0.5 < sum(a != b for a, b in zip(picks, other_seed, strict=True)) / len(items) < 0.95
    # Every wrong choice gets used: picks are spread, not always the first other option.
    assert {i.choices.index(w) for w, i in zip(picks, items, strict=True) if i.choices} == {
        0,
        1,
        2,
        3,
        4,
    }


def test_binary_tasks_flip() -> None:
    yes = Item(id="s", question="Q?", answer="yes", choices=["yes", "no"])
    true = Item(id="c", question="C.", answer="true", choices=["true", "false"])
    for seed in range(5):
        assert pick_wrong_answer(yes, TaskName.STRATEGYQA, seed) == "no"
        assert pick_wrong_answer(true, TaskName.CREAK, seed) == "false"
    # Generic-format items of a binary task need no choices to flip.
    bare_no = Item(id="s2", question="Q?", answer="no")
    assert pick_wrong_answer(bare_no, TaskName.STRATEGYQA, 0) == "yes"


def test_free_form_uses_wrong_answers_or_explains() -> None:
    assert pick_wrong_answer(FREE, TaskName.GENERIC, 0) in {"Rome", "Oslo"}
    with pytest.raises(PerturbationError, match="choices or wrong_answers"):
        pick_wrong_answer(BARE, TaskName.GENERIC, 0)
    assert contrast_answer(BARE, TaskName.GENERIC, Perturbation.EMPTY, 0) == ""


def test_counterfactual_fraction_and_independent_salt() -> None:
    ids = [f"item-{n}" for n in range(4000)]
    chosen = [i for i in ids if is_counterfactual(i, seed=7, fraction=0.3)]
    assert 0.27 < len(chosen) / len(ids) < 0.33
    assert chosen == [i for i in ids if is_counterfactual(i, seed=7, fraction=0.3)]
    assert not any(is_counterfactual(i, 7, 0.0) for i in ids)
    assert all(is_counterfactual(i, 7, 1.0) for i in ids)
    # Nested: raising the fraction only adds items.
    assert set(chosen) <= {i for i in ids if is_counterfactual(i, seed=7, fraction=0.5)}
    items = [Item(id=i, question="Q?", answer="a", choices=list("abcdefgh")) for i in ids[:400]]
    same = sum(
        counterfactual_answer(i, TaskName.QASC, 0) == pick_wrong_answer(i, TaskName.QASC, 0)
        for i in items
    )
    assert same < 120  # ~1/7 by chance if the two salts are independent


# ---------------------------------------------------------------- planning


def test_request_ids_round_trip() -> None:
    rid = request_id("a#b#factual", Tag.COUNTERFACTUAL)
    assert rid == "a#b#factual#counterfactual"
    assert split_request_id(rid) == ("a#b#factual", Tag.COUNTERFACTUAL)


def _settings(**kw: object) -> DecodingSettings:
    return DecodingSettings.model_validate({"num_demonstrations": 0} | kw)


def test_contrastive_wrong_with_role_swap() -> None:
    job = plan([MC], TaskName.CSQA, _settings(counterfactual_fraction=1.0), "m")
    assert job.errors == []
    factual, counter = job.requests
    wrong_c = pick_wrong_answer(MC, TaskName.CSQA, 0)
    wrong_cf = counterfactual_answer(MC, TaskName.CSQA, 0)
    assert (factual.tag, factual.answer, factual.contrast_answer) == (Tag.FACTUAL, "b", wrong_c)
    assert factual.request.pos_prompt.endswith("\nA: The answer is b.")
    assert factual.request.neg_prompt == factual.request.pos_prompt.replace(
        "is b.", f"is {wrong_c}."
    )
    # Counterfactual: C+ argues for the wrong answer, C- carries the gold one.
    assert (counter.tag, counter.answer, counter.contrast_answer) == (
        Tag.COUNTERFACTUAL,
        wrong_cf,
        "b",
    )
    assert counter.request.pos_prompt.endswith(f"is {wrong_cf}.")
    assert counter.request.neg_prompt == factual.request.pos_prompt
    assert counter.request.request_id == "mc#counterfactual"


def test_contrastive_empty_and_greedy() -> None:
    empty = plan(
        [MC], TaskName.CSQA, _settings(perturbation="empty", counterfactual_fraction=1), "m"
    )
    assert [p.contrast_answer for p in empty.requests] == ["", ""]
    assert all(
        p.request.neg_prompt and p.request.neg_prompt.endswith("A: The answer is .")
        for p in empty.requests
    )

    greedy = plan([MC], TaskName.CSQA, _settings(mode="greedy", counterfactual_fraction=1), "m")
    assert [p.request.neg_prompt for p in greedy.requests] == [None, None]
    assert [p.tag for p in greedy.requests] == [Tag.FACTUAL, Tag.COUNTERFACTUAL]
    assert all(not p.request.contrastive for p in greedy.requests)


def test_items_without_wrong_answers() -> None:
    job = plan([BARE, FREE], TaskName.GENERIC, _settings(), "m")
    assert [p.item.id for p in job.requests] == ["free"]
    assert [(e.item_id, e.code, e.field) for e in job.errors] == [
        ("bare", "invalid_item", "wrong_answers")
    ]
    # Greedy and empty need no wrong answer; only the counterfactual does.
    job = plan(
        [BARE], TaskName.GENERIC, _settings(perturbation="empty", counterfactual_fraction=1), "m"
    )
    assert [p.tag for p in job.requests] == [Tag.FACTUAL]
    assert [e.item_id for e in job.errors] == ["bare"]


def test_plan_shares_one_demonstration_prefix() -> None:
    items = [
        Item(id=f"i{n}", question=f"Claim number {n}.", answer="true", choices=["true", "false"])
        for n in range(5)
    ]
    job = plan(items, TaskName.CREAK, _settings(num_demonstrations=4, seed=2), "m")
    prefixes = {p.request.pos_prompt.rsplit("\n\nQ: ", 1)[0] for p in job.requests}
    assert len(prefixes) == 1
    assert prefixes.pop().count("\nA: The statement is ") == 4
    assert job.requests[0].request.settings.stop == ("\n\n", "\nQ:")


# ---------------------------------------------------------------- records


def test_round_trip_fills_every_record_field() -> None:
    settings = DecodingSettings.model_validate(
        {
            "lambda": 0.3,
            "alpha": 0.1,
            "temperature": 0.7,
            "max_new_tokens": 64,
            "seed": 5,
            "counterfactual_fraction": 1.0,
            "num_demonstrations": 0,
        }
    )
    engine = FakeEngine()
    job = plan([MC], TaskName.CSQA, settings, engine.model_name)
    request = job.requests[0].request
    assert (
        request.settings.lam,
        request.settings.alpha,
        request.settings.temperature,
        request.settings.max_new_tokens,
    ) == (0.3, 0.1, 0.7, 64)
    records = to_records(job, engine.generate(job.decode_requests))
    wrong_c = pick_wrong_answer(MC, TaskName.CSQA, 5)
    wrong_cf = counterfactual_answer(MC, TaskName.CSQA, 5)

    def expected(tag: Tag, answer: str, negative: str, prompt_tokens: int) -> RationaleRecord:
        return RationaleRecord(
            item_id="mc",
            task=TaskName.CSQA,
            question="Pick one?",
            choices=["a", "b", "c", "d"],
            gold_answer="b",
            answer=answer,
            tag=tag,
            rationale=f"Rationale for mc#{tag.value} (contrastive=True).",
            decoding=RecordDecoding.model_validate(
                {
                    "mode": "contrastive",
                    "perturbation": "wrong",
                    "contrast_answer": negative,
                    "lambda": 0.3,
                    "alpha": 0.1,
                    "temperature": 0.7,
                    "max_new_tokens": 64,
                    "seed": 5,
                }
            ),
            model="fake-model",
            finish_reason=FinishReason.STOP,
            prompt_tokens=prompt_tokens,
            completion_tokens=3,
            continuations=1,
            error=None,
        )

    lengths = [len(p.request.pos_prompt) + len(p.request.neg_prompt or "") for p in job.requests]
    assert records == [
        expected(Tag.FACTUAL, "b", wrong_c, lengths[0]),
        expected(Tag.COUNTERFACTUAL, wrong_cf, "b", lengths[1]),
    ]
    dumped = records[0].model_dump(by_alias=True, mode="json")  # type: ignore[union-attr]
    assert dumped["decoding"]["lambda"] == 0.3


def test_greedy_records_carry_no_contrast_fields() -> None:
    engine = FakeEngine()
    (record,) = generate(engine, [FREE], TaskName.GENERIC, _settings(mode=DecodingMode.GREEDY))
    assert isinstance(record, RationaleRecord)
    assert record.decoding == RecordDecoding.model_validate(
        {
            "mode": "greedy",
            "perturbation": None,
            "contrast_answer": None,
            "lambda": None,
            "alpha": None,
            "temperature": 1.0,
            "max_new_tokens": 128,
            "seed": 0,
        }
    )
    assert record.rationale == "Rationale for free#factual (contrastive=False)."
    assert (record.choices, record.continuations) == (None, 0)


def test_failed_results_become_item_errors() -> None:
    too_long = Item(id="too-long", question="Q?", answer="a", choices=["a", "b"])
    engine = FakeEngine()
    out = list(generate(engine, [MC, too_long, BARE], TaskName.CSQA, _settings(), batch_size=1))
    # Planning errors first (BARE has no wrong answer), then results in item order.
    assert [type(o) for o in out] == [ItemError, RationaleRecord, ItemError]
    failed = out[2]
    assert isinstance(failed, ItemError)
    assert (failed.item_id, failed.code, failed.tag) == ("too-long", "prompt_too_long", Tag.FACTUAL)
    assert failed.message == MESSAGES["prompt_too_long"]
    assert "5000" not in failed.message  # the engine's detail is for the worker log
    assert [len(b) for b in engine.batches] == [1, 1]


# ---------------------------------------------------------------- what tenants read


def test_error_codes_and_messages_are_a_fixed_catalogue() -> None:
    assert set(MESSAGES) <= set(get_args(ErrorCode))
    bare = plan([BARE], TaskName.GENERIC, _settings(), "m").errors[0]
    assert (bare.code, bare.field, bare.message) == (
        "invalid_item",
        "wrong_answers",
        MESSAGES["invalid_item"],
    )


@pytest.mark.parametrize(
    "detail",
    [
        "engine_error: RuntimeError: CUDA error: an illegal memory access was encountered at "
        "/opt/venv/lib/python3.11/site-packages/vllm/worker.py:412",
        'Traceback (most recent call last):\n  File "/srv/contrail/worker.py", line 3',
        None,
    ],
    ids=["exception-text", "traceback", "no-detail"],
)
def test_engine_details_never_reach_the_tenant(
    detail: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    job = plan([MC], TaskName.CSQA, _settings(), "m")
    failed = [
        DecodeResult(p.request.request_id, [], "", FinishReason.ERROR, error=detail)
        for p in job.requests
    ]
    with caplog.at_level(logging.WARNING, logger="contrail.worker"):
        out = to_records(job, failed)
    assert [(o.code, o.message) for o in out if isinstance(o, ItemError)] == [
        ("engine_error", MESSAGES["engine_error"])
    ] * len(job.requests)
    if detail is not None:  # the operator still sees it
        assert detail.splitlines()[0] in caplog.text


def test_real_engine_errors_reach_the_tenant_as_catalogue_messages(
    tiny_model_path: Path,
) -> None:
    from contrail.worker.engine.reference import ReferenceEngine
    from contrail.worker.models import ModelSpec

    engine = ReferenceEngine(ModelSpec("tiny", tiny_model_path), max_model_len=64)
    long_item = Item(id="long", question="Why? " * 60, answer="a", choices=["a", "b"])
    out = list(generate(engine, [long_item], TaskName.CSQA, _settings(max_new_tokens=4)))
    assert {(o.code, o.message) for o in out if isinstance(o, ItemError)} == {
        ("prompt_too_long", MESSAGES["prompt_too_long"])
    }
    assert "max_model_len" not in "".join(o.message for o in out if isinstance(o, ItemError))


def test_error_codes_from_engine_messages() -> None:
    assert error_code("lockstep_exhausted: 3 retries") == "lockstep_exhausted"
    assert error_code("CUDA out of memory") == "engine_error"
    assert error_code(None) == "engine_error"


def test_to_records_rejects_results_it_did_not_plan() -> None:
    job = plan([MC], TaskName.CSQA, _settings(), "m")
    stray = DecodeResult("other#factual", [], "", FinishReason.STOP)
    with pytest.raises(ValueError, match="unknown request"):
        to_records(job, [stray])


def test_generate_batches_requests() -> None:
    items = [Item(id=f"i{n}", question=f"Q{n}?", answer="a", choices=["a", "b"]) for n in range(5)]
    engine = FakeEngine()
    out = list(
        generate(engine, items, TaskName.CSQA, _settings(counterfactual_fraction=1.0), batch_size=4)
    )
    assert [len(b) for b in engine.batches] == [4, 4, 2]
    assert [(r.item_id, r.tag) for r in out if isinstance(r, RationaleRecord)] == [
        (f"i{n}", tag) for n in range(5) for tag in (Tag.FACTUAL, Tag.COUNTERFACTUAL)
    ]
    with pytest.raises(ValueError):
        list(generate(engine, items, TaskName.CSQA, _settings(), batch_size=0))


def test_prompts_over_the_engine_bound_are_refused_before_they_are_built() -> None:
    """A prompt longer than `max_prompt_chars` is prompt_too_long at planning: decided from the
    blocks' lengths, so neither prompt of the pair is assembled, and its shard-mates plan."""
    huge = Item(id="huge", question="Which? " + "x" * 5000, answer="a", choices=["a", "b"])
    demos = [
        Demonstration(question="Demo " + "d" * 400, answer="a", rationale="r.", choices=["a", "b"])
    ]
    settings = _settings(num_demonstrations=1)
    free = plan([MC, huge], TaskName.CSQA, settings, "fake", demos)
    bound = max(len(p) for r in free.decode_requests for p in (r.pos_prompt, r.neg_prompt or ""))
    short = max(len(r.pos_prompt) for r in free.decode_requests if r.request_id.startswith("mc"))
    bounded = plan([MC, huge], TaskName.CSQA, settings, "fake", demos, None, short)
    assert [r.request_id for r in bounded.decode_requests] == ["mc#factual"]
    assert [(e.item_id, e.code) for e in bounded.errors] == [("huge", "prompt_too_long")]
    # The bound is on the whole prompt, demonstrations included, and it is inclusive.
    exact = plan([MC, huge], TaskName.CSQA, settings, "fake", demos, None, bound)
    assert exact.errors == [] and len(exact.decode_requests) == 2
    too_small = plan([MC], TaskName.CSQA, settings, "fake", demos, None, short - 1)
    assert [e.code for e in too_small.errors] == ["prompt_too_long"]
