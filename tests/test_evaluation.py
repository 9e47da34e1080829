"""LAS arithmetic on hand-made cases, the simulator plumbing, cheap signals, and a tiny real run."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contrail.client.types import (
    DecodingMode,
    FinishReason,
    Perturbation,
    RationaleRecord,
    RecordDecoding,
    Tag,
    TaskName,
)
from contrail.core.quality_signals import (
    content_words,
    names_other_choice,
    record_signals,
    summarize_signals,
)
from contrail.distill.las import (
    SimInput,
    bootstrap,
    calibrate,
    evaluate_las,
    las_value,
    record_options,
    render_context,
)
from contrail.distill.report import (
    comparison_chart,
    comparison_table,
    evaluate_file,
    main,
    summarize,
)


def make_record(
    item_id: str,
    rationale: str,
    *,
    question: str = "Is it so?",
    answer: str = "yes",
    gold: str | None = None,
    choices: list[str] | None = None,
    task: TaskName = TaskName.STRATEGYQA,
    tag: Tag = Tag.FACTUAL,
    contrast: str | None = "no",
    tokens: int = 5,
) -> RationaleRecord:
    if choices is None and task in (TaskName.STRATEGYQA, TaskName.CREAK):
        choices = ["yes", "no"] if task is TaskName.STRATEGYQA else ["true", "false"]
    return RationaleRecord(
        item_id=item_id,
        task=task,
        question=question,
        choices=choices,
        gold_answer=gold if gold is not None else answer,
        answer=answer,
        tag=tag,
        rationale=rationale,
        decoding=RecordDecoding(
            mode=DecodingMode.CONTRASTIVE,
            perturbation=Perturbation.WRONG,
            contrast_answer=contrast,
            temperature=1.0,
            max_new_tokens=64,
            seed=0,
        ),
        model="test",
        finish_reason=FinishReason.STOP,
        prompt_tokens=10,
        completion_tokens=tokens,
    )


class ScriptedSimulator:
    """Predicts what the texts tell it to: "qr=>X" in the rationale decides Q+R (else the question
    decides), "q=>X" in the question decides Q, "r=>X" in the rationale decides R; otherwise the
    first option. Scores are 1 for the predicted option, 0 for the others."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls: list[list[SimInput]] = []

    @staticmethod
    def _find(key: str, text: str | None) -> str | None:
        if text is None:
            return None
        m = re.search(rf"(?<![a-z]){key}=>(\w+)", text)
        return m.group(1) if m else None

    def _pick(self, inp: SimInput) -> str:
        if inp.question is not None and inp.rationale is not None:
            hit = self._find("qr", inp.rationale) or self._find("q", inp.question)
        elif inp.question is not None:
            hit = self._find("q", inp.question)
        else:
            hit = self._find("r", inp.rationale)
        return hit if hit in inp.options else inp.options[0]

    def score(self, inputs: Sequence[SimInput]) -> list[list[float]]:
        self.calls.append(list(inputs))
        return [[1.0 if o == self._pick(i) else 0.0 for o in i.options] for i in inputs]


def scripted(item_id: str, q: str, qr: str, r: str, answer: str = "yes") -> RationaleRecord:
    return make_record(
        item_id,
        f"Because qr=>{qr} and r=>{r}.",
        question=f"Is it so? q=>{q}",
        answer=answer,
    )


# ---------------------------------------------------------------------------------------------
# LAS arithmetic
# ---------------------------------------------------------------------------------------------


def test_las_value_by_hand() -> None:
    # leaked: gains 1 and 0 (mean 0.5); non-leaked: gains 1 and -1 (mean 0) -> LAS 0.25
    qr = np.array([1, 1, 1, 0], dtype=bool)
    q = np.array([0, 1, 0, 1], dtype=bool)
    r = np.array([1, 1, 0, 0], dtype=bool)
    assert las_value(qr, q, r) == pytest.approx(0.25)


def test_las_weighs_unequal_groups_equally() -> None:
    # 1 leaked record with gain 1, 3 non-leaked with gain 0: LAS = (1 + 0) / 2 = 0.5, whereas the
    # plain difference acc(q+r) - acc(q) over all records would be 1/4.
    qr = np.array([1, 0, 1, 0], dtype=bool)
    q = np.array([0, 0, 1, 0], dtype=bool)
    r = np.array([1, 0, 0, 0], dtype=bool)
    assert las_value(qr, q, r) == pytest.approx(0.5)
    assert qr.mean() - q.mean() == pytest.approx(0.25)
    # the other way round: 3 leaked with gain 0, 1 non-leaked with gain -1 -> -0.5 (naive -0.25)
    qr2 = np.array([0, 1, 1, 1], dtype=bool)
    q2 = np.ones(4, dtype=bool)
    assert las_value(qr2, q2, ~r) == pytest.approx(-0.5)


def _las_by_definition(qr: list[bool], q: list[bool], r: list[bool]) -> float:
    """Hase et al. 2020 as docs/METHOD.md section 4 states it, written out with plain loops."""
    gains: dict[bool, list[int]] = {True: [], False: []}
    for a, b, leaked in zip(qr, q, r, strict=True):
        gains[leaked].append(int(a) - int(b))
    means = [sum(g) / len(g) for g in gains.values() if g]
    return sum(means) / len(means)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=40).flatmap(
        lambda n: st.tuples(*(st.lists(st.booleans(), min_size=n, max_size=n),) * 3)
    )
)
def test_las_value_equals_its_definition(vectors: tuple[list[bool], ...]) -> None:
    qr, q, r = vectors
    expected = _las_by_definition(qr, q, r)
    got = las_value(np.array(qr), np.array(q), np.array(r))
    assert got == pytest.approx(expected, abs=1e-12)


def test_evaluate_las_unequal_groups() -> None:
    # The same unequal case through the simulator plumbing and the bootstrap statistics.
    records = [
        scripted("leaked", q="no", qr="yes", r="yes"),  # leaked, gain 1
        *(scripted(f"flat{i}", q="yes", qr="yes", r="no") for i in range(3)),  # gain 0
    ]
    result, _ = evaluate_las(records, ScriptedSimulator(), calibration="none", reps=50)
    assert result.leaked == 1 and result.scored == 4
    assert result.las.value == pytest.approx(0.5)
    assert result.acc_qr.value - result.acc_q.value == pytest.approx(0.25)


def test_las_one_group_empty_uses_the_other() -> None:
    ones = np.ones(4, dtype=bool)
    zeros = np.zeros(4, dtype=bool)
    assert las_value(ones, zeros, zeros) == 1.0  # perfect, nothing leaked
    assert las_value(ones, zeros, ones) == 1.0  # perfect, everything leaked
    assert las_value(ones, ones, ones) == 0.0
    assert math.isnan(las_value(zeros[:0], zeros[:0], zeros[:0]))


def test_bootstrap_is_seeded_and_brackets_the_value() -> None:
    rng = np.random.default_rng(1)
    qr, q, r = (rng.random(200) < p for p in (0.7, 0.5, 0.4))
    a = bootstrap(qr, q, r, reps=300, seed=3)
    b = bootstrap(qr, q, r, reps=300, seed=3)
    assert a == b
    for est in a.values():
        assert est.low <= est.value <= est.high
    assert a["acc_qr"].value == pytest.approx(qr.mean(), abs=1e-4)
    assert a["leak_rate"].value == a["acc_r"].value
    # Constant data: a degenerate interval.
    c = bootstrap([True] * 10, [False] * 10, [False] * 10, reps=50)
    assert (c["las"].value, c["las"].low, c["las"].high) == (1.0, 1.0, 1.0)


def test_evaluate_las_mixed_cases() -> None:
    records = [
        scripted("leak-helps", q="no", qr="yes", r="yes"),  # leaked, gain 1
        scripted("leak-nothing", q="yes", qr="yes", r="yes"),  # leaked, gain 0
        scripted("helps", q="no", qr="yes", r="no"),  # not leaked, gain 1
        scripted("hurts", q="yes", qr="no", r="no"),  # not leaked, gain -1
    ]
    result, sims = evaluate_las(records, ScriptedSimulator(), calibration="none", reps=200)
    assert result.scored == 4 and result.skipped == 0 and result.leaked == 2
    assert result.las.value == pytest.approx(0.25)
    assert result.gain_leaked.value == pytest.approx(0.5)
    assert result.gain_nonleaked.value == pytest.approx(0.0)
    assert result.acc_qr.value == pytest.approx(0.75)
    assert result.acc_q.value == pytest.approx(0.5)
    assert result.leak_rate.value == pytest.approx(0.5)
    assert [s.correct for s in sims] == [
        (True, False, True),
        (True, True, True),
        (True, False, False),
        (False, True, False),
    ]


def test_perfect_and_useless_rationales() -> None:
    perfect = [scripted(f"p{i}", q="no", qr="yes", r="no") for i in range(6)]
    useless = [scripted(f"u{i}", q="no", qr="no", r="no") for i in range(6)]
    leaky = [scripted(f"l{i}", q="no", qr="yes", r="yes") for i in range(6)]
    sim = ScriptedSimulator()
    assert evaluate_las(perfect, sim, calibration="none")[0].las.value == 1.0
    assert evaluate_las(useless, sim, calibration="none")[0].las.value == 0.0
    leaked = evaluate_las(leaky, sim, calibration="none")[0]
    assert leaked.leak_rate.value == 1.0 and leaked.las.value == 1.0
    both = evaluate_las(perfect + useless, sim, calibration="none")[0]
    assert both.las.value == pytest.approx(0.5)  # all non-leaked: mean gain


def test_target_is_the_rationalised_answer() -> None:
    # A counterfactual record argues for "no" (gold "yes"): predicting "no" is correct.
    rec = make_record(
        "cf",
        "qr=>no r=>no",
        question="q=>yes",
        answer="no",
        gold="yes",
        tag=Tag.COUNTERFACTUAL,
        contrast="yes",
    )
    result, sims = evaluate_las([rec], ScriptedSimulator(), calibration="none", reps=10)
    assert sims[0].target == "no" and sims[0].correct == (True, False, True)
    assert result.las.value == 1.0


def test_free_form_options_and_skips() -> None:
    free = make_record(
        "f", "r=>Paris", answer="Paris", task=TaskName.GENERIC, choices=None, contrast="Rome"
    )
    assert record_options(free) == ("Paris", "Rome")
    cf = make_record(
        "f",
        "x",
        answer="Rome",
        gold="Paris",
        task=TaskName.GENERIC,
        choices=None,
        contrast="Paris",
        tag=Tag.COUNTERFACTUAL,
    )
    assert record_options(cf) == ("Rome", "Paris")
    lonely = make_record("g", "x", answer="Oslo", task=TaskName.GENERIC, choices=None, contrast="")
    assert record_options(lonely) is None
    # Another record of the same item supplies the alternative.
    assert record_options(lonely, ["Oslo", "Bergen"]) == ("Oslo", "Bergen")
    result, _ = evaluate_las([free, lonely], ScriptedSimulator(), calibration="none", reps=5)
    assert (result.scored, result.skipped) == (1, 1)


def test_batch_calibration_removes_a_constant_bias() -> None:
    opts = [("yes", "no")] * 12
    # Raw scores always favour "yes" by 5; the real signal is +-1 around that.
    raw = [[5.0 + (1 if i % 3 else -1), 0.0] for i in range(12)]
    assert all(int(np.argmax(s)) == 0 for s in raw)
    cal = calibrate(raw, opts, "batch")
    preds = [int(np.argmax(s)) for s in cal]
    assert preds == [1 if i % 3 == 0 else 0 for i in range(12)]
    assert calibrate(raw, opts, "none") == raw
    assert calibrate(raw[:3], opts[:3], "batch") == raw[:3]  # group too small: untouched


def test_render_context_conditions() -> None:
    mc = SimInput(TaskName.CSQA, "Where?", "Because.", ("home", "park"))
    text = render_context(mc)
    assert text == (
        "Q: Where?\nAnswer Choices:\n(a) home\n(b) park\nExplanation: Because.\nA: The answer is"
    )
    r_only = render_context(SimInput(TaskName.CREAK, None, "It is.", ("true", "false")))
    assert r_only == "Explanation: It is.\nA: The statement is"
    q_only = render_context(SimInput(TaskName.STRATEGYQA, "Is it?", None, ("yes", "no")))
    assert q_only == "Q: Is it?\nA: The answer is"


# ---------------------------------------------------------------------------------------------
# Cheap signals
# ---------------------------------------------------------------------------------------------


def test_content_words_and_restates() -> None:
    assert content_words("The Dogs are in the houses") == ["dog", "house"]
    q = "Could a llama birth twice during the War in Vietnam?"
    restating = make_record("a", "A llama could birth twice during the war.", question=q)
    informative = make_record(
        "b", "The Vietnam war lasted 20 years; a llama gestation takes 11 months.", question=q
    )
    empty = make_record("c", "The answer is yes.", question=q)
    s1, s2, s3 = (record_signals(r) for r in (restating, informative, empty))
    assert s1.restates and s1.overlap == 1.0
    assert not s2.restates and s2.overlap < 0.5
    assert s3.restates and s3.content_words == 0
    assert s2.words == 12 and s2.tokens == 5
    agg = summarize_signals([s1, s2, s3])
    assert agg.records == 3 and agg.restate_rate == pytest.approx(2 / 3, abs=1e-3)


def test_running_totals_equal_the_summary_of_the_list() -> None:
    """The finalizer's bounded-memory totals give exactly the list summary (median from the
    word-count histogram, odd and even counts, and rates over the checked records only)."""
    import random

    from contrail.core.quality_signals import RecordSignals, SignalTotals

    rng = random.Random(7)
    signals = [
        RecordSignals(
            item_id=f"i{i}",
            tag=rng.choice(["factual", "counterfactual"]),
            words=rng.randint(0, 40),
            tokens=rng.randint(1, 60),
            content_words=rng.randint(0, 10),
            overlap=round(rng.random(), 4),
            restates=rng.random() < 0.3,
            names_other_choice=rng.choice([None, True, False]),
        )
        for i in range(301)
    ]
    for n in (0, 1, 2, 300, 301):
        totals = SignalTotals()
        for sig in signals[:n]:
            totals.add(sig)
        words = sorted(sig.words for sig in signals[:n])
        summary = totals.summary()
        assert summary == summarize_signals(signals[:n])
        if n:
            mid = n // 2
            want = words[mid] if n % 2 else (words[mid - 1] + words[mid]) / 2
            assert summary.median_words == want
            assert summary.mean_overlap == round(sum(s.overlap for s in signals[:n]) / n, 4)


def test_names_other_choice() -> None:
    def rec(rationale: str, answer: str = "yes", **kw: object) -> RationaleRecord:
        return make_record("x", rationale, answer=answer, **kw)  # type: ignore[arg-type]

    assert names_other_choice(rec("Thus the answer is no.")) is True
    assert names_other_choice(rec("No, llamas are slow.")) is True
    assert names_other_choice(rec("Thus the answer is yes. There is no doubt.")) is False
    assert names_other_choice(rec("Nothing here says no to that.")) is False
    creak = {"task": TaskName.CREAK}
    assert names_other_choice(rec("The statement is not true.", answer="true", **creak)) is True
    assert names_other_choice(rec("The statement is not false.", answer="true", **creak)) is False
    mc = {"task": TaskName.CSQA, "choices": ["bank", "river", "park"], "contrast": "park"}
    assert names_other_choice(rec("You keep money at a bank.", answer="bank", **mc)) is False
    assert names_other_choice(rec("People walk in a park.", answer="bank", **mc)) is True
    # A choice that the question itself mentions does not count.
    q = {"question": "Is a river bank wet?"}
    assert names_other_choice(rec("A river is wet.", answer="bank", **mc, **q)) is False
    free = rec("Rome is big.", answer="Paris", task=TaskName.GENERIC, choices=None)
    assert names_other_choice(free) is None


def test_summarize_without_simulator() -> None:
    records = [
        make_record("a", "Llamas carry 11 months.", tag=Tag.FACTUAL),
        make_record("a", "The answer is no.", answer="no", gold="yes", tag=Tag.COUNTERFACTUAL),
    ]
    s = summarize(records)
    assert s.las is None and s.records == 2
    assert s.counts_by_tag == {"counterfactual": 1, "factual": 1}
    assert s.signals_by_tag["counterfactual"].restate_rate == 1.0
    json.loads(s.model_dump_json())


def test_comparison_table_and_chart(tmp_path: Path) -> None:
    recs = [scripted(f"i{i}", q="no", qr="yes", r="no" if i % 2 else "yes") for i in range(12)]
    sim = ScriptedSimulator()
    a = summarize(recs, sim, calibration="none", bootstrap_reps=50)
    b = summarize(recs[:6], sim, calibration="none", bootstrap_reps=50)
    rows = [("t1", "greedy", a), ("t1", "wrong", b), ("t2", "greedy", b)]
    table = comparison_table(rows)
    assert table.count("\n") == 2 + len(rows)
    assert "| t1 | greedy | 12 | 1.000 [1.000, 1.000]" in table
    png = comparison_chart(rows, tmp_path / "c.png", title="x")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_rows_are_labelled_by_the_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from contrail.distill.report import run_eval

    contrastive = [make_record(f"s{i}", "Because.", tag=Tag.FACTUAL) for i in range(3)]
    contrastive.append(make_record("s0", "Because not.", tag=Tag.COUNTERFACTUAL, answer="no"))
    greedy = [
        make_record(f"c{i}", "So it is.", task=TaskName.CREAK, answer="true", contrast=None)
        for i in range(2)
    ]
    for r in greedy:
        r.decoding.mode, r.decoding.perturbation = DecodingMode.GREEDY, None
    files = []
    for name, records in (("run-1", contrastive), ("run-2", greedy), ("run-3", greedy)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(r.model_dump_json(by_alias=True) + "\n" for r in records))
        files.append(path)
    (tmp_path / "empty.jsonl").write_text("")
    files.append(tmp_path / "empty.jsonl")
    args = argparse.Namespace(
        datasets=files,
        no_las=True,
        simulator=None,
        calibration="batch",
        bootstrap=10,
        seed=0,
        json=None,
        report_dir=None,
    )
    assert run_eval(args) == 0
    table = capsys.readouterr().out
    assert "| strategyqa | contrastive-wrong · factual+counterfactual | 4 |" in table
    # two files with the same task and mode keep their file names apart
    assert "| creak | greedy · factual (run-2) | 2 |" in table
    assert "| creak | greedy · factual (run-3) | 2 |" in table
    assert "|  | empty | 0 |" in table  # no records: the file name is all there is


# ---------------------------------------------------------------------------------------------
# The real simulator on the tiny model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_simulator(tiny_model_path: Path) -> object:
    from contrail.distill.las import LikelihoodSimulator

    return LikelihoodSimulator(str(tiny_model_path), max_batch_tokens=256)


def test_likelihood_simulator_matches_a_manual_forward(tiny_simulator: object) -> None:
    import torch

    from contrail.distill.las import LikelihoodSimulator

    assert isinstance(tiny_simulator, LikelihoodSimulator)
    sim = tiny_simulator
    inputs = [
        SimInput(TaskName.STRATEGYQA, "Is water wet?", "Water is a liquid.", ("yes", "no")),
        SimInput(TaskName.CSQA, "Where is money?", None, ("bank vault", "river bed", "park")),
        SimInput(TaskName.CREAK, None, "Cats are animals.", ("true", "false")),
    ]
    scores = sim.score(inputs)
    assert [len(s) for s in scores] == [2, 3, 2]
    assert all(math.isfinite(x) and x < 0 for s in scores for x in s)
    model, tok = sim._model, sim._tok
    for inp, got in zip(inputs, scores, strict=True):
        ctx = tok(render_context(inp), add_special_tokens=False)["input_ids"]
        for option, value in zip(inp.options, got, strict=True):
            cont = tok(" " + option, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0], -1)
            want = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
            assert value == pytest.approx(want, abs=1e-3)
    assert sim.score(inputs) == scores  # cached, identical


def test_tiny_real_las_run(tiny_simulator: object, tmp_path: Path) -> None:
    from contrail.distill.las import LikelihoodSimulator

    assert isinstance(tiny_simulator, LikelihoodSimulator)
    records = [
        make_record(f"s{i}", f"Fact number {i} says so.", question=f"Is claim {i} right?")
        for i in range(12)
    ] + [
        make_record(f"c{i}", f"Claim {i} holds.", task=TaskName.CREAK, answer="false")
        for i in range(3)
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(r.model_dump_json(by_alias=True) + "\n" for r in records))
    summary = evaluate_file(
        path, tiny_simulator, bootstrap_reps=100, details_path=tmp_path / "details.jsonl"
    )
    las = summary.las
    assert las is not None and las.scored == 15 and las.simulator == tiny_simulator.name
    for est in (las.las, las.acc_qr, las.acc_q, las.acc_r):
        assert est.low <= est.value <= est.high
    assert -1.0 <= las.las.value <= 1.0
    details = [json.loads(x) for x in (tmp_path / "details.jsonl").read_text().splitlines()]
    assert len(details) == 15 and {d["pred_qr"] for d in details} <= {"yes", "no", "true", "false"}
    # The CLI entry point (signals only, no model) writes JSON and a report.
    assert main(["eval", str(path), "--no-las", "--json", str(tmp_path / "s.json"),
                 "--report-dir", str(tmp_path / "rep")]) == 0  # fmt: skip
    assert (tmp_path / "rep" / "report.png").is_file()
    assert json.loads((tmp_path / "s.json").read_text())[str(path)]["records"] == 15


def test_paired_difference_matches_unpaired_values() -> None:
    from contrail.distill.las import paired_difference

    good = [scripted(f"i{i}", q="no", qr="yes", r="no") for i in range(8)]
    bad = [scripted(f"i{i}", q="no", qr="no", r="no") for i in range(8)]
    sim = ScriptedSimulator()
    _, sa = evaluate_las(good, sim, calibration="none", reps=0)
    _, sb = evaluate_las(bad, sim, calibration="none", reps=0)
    diff = paired_difference(sa, sb, reps=100)
    assert diff["las"].value == 1.0 and diff["acc_qr"].value == 1.0
    assert diff["acc_q"].value == 0.0 and diff["las"].low == 1.0
    # Only shared (item id, tag) pairs count.
    assert paired_difference(sa[:3], sb, reps=10)["acc_qr"].value == 1.0
