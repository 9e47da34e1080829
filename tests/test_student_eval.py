"""The student metrics (contrail.distill.student.evaluate) on hand-built students whose behaviour
is known, the paired comparison, and the model-backed student on the tiny model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from contrail.client.types import RationaleRecord, Tag, TaskName
from contrail.distill.las import LasResult, SimulatedRecord
from contrail.distill.student.evaluate import compare, evaluate, forced_prefix, parse_generation
from tests.test_evaluation import make_record

N = 40


def _data() -> list[RationaleRecord]:
    """N StrategyQA items, golds alternating yes/no, each with a counterfactual rationale."""
    out = []
    for i in range(N):
        gold, wrong = ("yes", "no") if i % 2 else ("no", "yes")
        q = f"Is thing {i} so?"
        out.append(make_record(f"q{i}", f"Thing {i} means {gold}.", question=q, answer=gold))
        out.append(
            make_record(
                f"q{i}", f"Thing {i} means {wrong}.", question=q, answer=wrong, gold=gold,
                tag=Tag.COUNTERFACTUAL, contrast=gold,
            )
        )  # fmt: skip
    return out


GOLD = {f"Is thing {i} so?": ("yes" if i % 2 else "no") for i in range(N)}


def _question(prompt: str) -> str:
    return next(q for q in GOLD if q in prompt)


class Ignores:
    """Knows every answer and never reads its rationale."""

    def generate(self, prompts: Sequence[str]) -> list[str]:
        return [f"[factual] I just know. So the answer is {GOLD[_question(p)]}" for p in prompts]

    def choose(
        self, prompts: Sequence[str], continuations: Sequence[str], options: Sequence[Sequence[str]]
    ) -> list[int]:
        return [list(o).index(GOLD[_question(p)]) for p, o in zip(prompts, options, strict=True)]

    def perturb(self, rationale: str, item_id: str, seed: int) -> str:
        return "zq " * len(rationale.split())


class Follows:
    """States the answer in its rationale and answers whatever the rationale says."""

    def generate(self, prompts: Sequence[str]) -> list[str]:
        return [f"[factual] It means {GOLD[_question(p)]}. So the answer is {GOLD[_question(p)]}"
                for p in prompts]  # fmt: skip

    def choose(
        self, prompts: Sequence[str], continuations: Sequence[str], options: Sequence[Sequence[str]]
    ) -> list[int]:
        picks = []
        for forced, opts in zip(continuations, options, strict=True):
            rationale = forced.removeprefix("[factual]")
            said = [i for i, o in enumerate(opts) if f" {o}." in rationale]
            picks.append(said[0] if said else 0)  # an unreadable rationale: the first option
        return picks

    def perturb(self, rationale: str, item_id: str, seed: int) -> str:
        return "zq " * len(rationale.split())


def test_a_student_that_ignores_its_rationale_has_no_drop_and_follows_nothing() -> None:
    result = evaluate(Ignores(), _data(), name="ignores", reps=200)
    m = result.metrics
    assert result.items == N
    assert m["accuracy"].value == m["own"].value == m["oracle"].value == 1.0
    assert m["perturbed"].value == 1.0 and m["drop"].value == 0.0
    assert m["drop"].low == m["drop"].high == 0.0
    assert m["following"].value == 0.0


def test_a_student_that_follows_its_rationale_drops_and_follows() -> None:
    result = evaluate(Follows(), _data(), name="follows", reps=200)
    m = result.metrics
    assert m["accuracy"].value == m["own"].value == m["oracle"].value == 1.0
    # Unreadable after perturbation: "yes" (the first option) every time, right on half.
    assert m["perturbed"].value == 0.5 and m["drop"].value == 0.5
    assert m["following"].value == 1.0
    assert m["drop"].low > 0.3


def test_the_paired_comparison_is_on_shared_items() -> None:
    a = evaluate(Follows(), _data(), name="follows", reps=200)
    b = evaluate(Ignores(), _data()[:N], name="ignores", reps=200)  # the first N/2 items
    diff = compare(a, b, reps=500)
    assert diff.items == N // 2
    assert diff.differences["accuracy"].value == 0.0
    assert diff.differences["following"].value == 1.0
    assert diff.differences["following"].low == 1.0
    drop = diff.differences["drop"]
    assert drop.low <= drop.value == 0.5 <= drop.high


def test_generations_are_parsed() -> None:
    assert parse_generation("[factual] A b. So the answer is yes.\nmore") == ("A b.", "yes")
    assert parse_generation("no answer here") == ("no answer here", "")


def test_forced_prefixes_match_the_training_targets() -> None:
    """The forced prefix is what each student was trained on up to its answer (an `answer`
    student's has no rationale and no doubled space)."""
    from contrail.distill.student.examples import texts

    record = make_record("c1", "It is so.")
    for objective, rationale in (("answer", ""), ("factual", "It is so.")):
        pair = texts(record, objective)
        assert pair is not None
        prompt, completion = pair
        assert (prompt + completion).startswith(forced_prefix(prompt, rationale)), objective
        assert completion.endswith(" yes")


def test_the_model_backed_student_runs_every_metric(tiny_model_path: Path) -> None:
    from contrail.distill.student.hf import HFStudent

    student = HFStudent(tiny_model_path, max_new_tokens=12)
    data = _data()[:8]
    result = evaluate(student, data, name="tiny", reps=100)
    assert result.items == 4
    assert all(r.own is not None and r.following is not None for r in result.results)
    noisy = student.perturb("Thing 1 means yes because of many facts.", "q1", 0)
    assert noisy == student.perturb("Thing 1 means yes because of many facts.", "q1", 0)
    assert noisy != "Thing 1 means yes because of many facts."
    json.loads(result.model_dump_json())  # the results file's content
    assert {TaskName.STRATEGYQA} == {r.task for r in data}


def test_las_of_the_students_own_rationales_with_a_real_simulator(tiny_model_path: Path) -> None:
    # A simulator cross-fitted on the tiny model's hidden states reads each student's own
    # rationales for its own answers: one that states its answer gets a clearly higher LAS than
    # one whose rationale says nothing, and neither is called validated (a cross-fitted head).
    from contrail.distill.las import evaluate_las
    from contrail.distill.simulators import HiddenStateEncoder, TrainedSimulator
    from contrail.distill.student.evaluate import NOT_VALIDATED

    encoder = HiddenStateEncoder(str(tiny_model_path), layer=2, max_batch_tokens=2048)
    simulator = TrainedSimulator(encoder=encoder, folds=4, seed=0, c=1.0)
    seen: list[int] = []

    def las(records: list[RationaleRecord]) -> tuple[LasResult, list[SimulatedRecord]]:
        seen.append(len(records))
        return evaluate_las(records, simulator, reps=200, seed=0)

    follows = evaluate(Follows(), _data(), name="follows", reps=200, las=las)
    ignores = evaluate(Ignores(), _data(), name="ignores", reps=200, las=las)
    assert seen == [N, N]  # every item's own rationale, once per student
    assert follows.las is not None and ignores.las is not None
    info = follows.las.simulator_info
    assert info is not None and info.kind == "trained" and "cross-fitted" in info.training
    assert follows.las.las.value > ignores.las.las.value + 0.2, (follows.las, ignores.las)
    assert follows.simulator_validation == ignores.simulator_validation == NOT_VALIDATED
    # The paired LAS difference resamples the same items on both sides.
    diff = compare(follows, ignores, reps=300)
    assert diff.las_items == N
    las_diff = diff.differences["las"]
    assert las_diff.value == pytest.approx(follows.las.las.value - ignores.las.las.value, abs=1e-3)
    assert 0.0 < las_diff.low <= las_diff.value <= las_diff.high
    # Without a simulator there is no LAS and nothing to say of one.
    plain = evaluate(Follows(), _data(), name="plain", reps=50)
    assert plain.las is None and plain.simulator_validation is None
