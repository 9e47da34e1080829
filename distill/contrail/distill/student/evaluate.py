"""`contrail eval-student`: how a trained student answers, and whether its answers follow its
rationales, on held-out items (the reference release's evaluation, with the article's LAS).

Per item (its factual record: question, options, gold answer and the teacher's rationale; its
counterfactual record when the data has one):

- **accuracy**: greedy generation after the prompt, the answer parsed after "So the answer is";
- **own**: the student's own rationale forced back, the answer scored among the options;
- **oracle**: the teacher's rationale forced instead;
- **perturbed**: the student's own rationale with half its tokens replaced by random ones
  (`perturb.py`, seeded per item) forced; **drop** = own - perturbed. Both sides are scored the
  same way, so a student that ignores its rationale has a drop of exactly 0;
- **following**: a counterfactual rationale (written for a wrong answer) forced; the share of
  items whose answer becomes that wrong answer;
- **LAS** of the student's rationales for its own answers, under a simulator, with the
  simulator's validation status stated beside it (docs/QUALITY.md).

Forced answers are scored among the item's options (sum of the option's token log-probabilities
and the end-of-text token after "So the answer is"), never generated: a free-form continuation
would add parse failures to what should measure dependence on the rationale. Items without
options count for accuracy only.

`compare` gives paired bootstrap CIs between two students on the items both were evaluated on,
LAS included (on the items where both gave one of the options: `las.paired_difference` over the
simulator's predictions for each).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
from pydantic import BaseModel

from contrail.client.types import RationaleRecord, Tag
from contrail.distill.adapters import ANSWER_PREFIX
from contrail.distill.las import (
    Estimate,
    LasResult,
    SimulatedRecord,
    SimulatorInfo,
    paired_difference,
    record_options,
)
from contrail.distill.student.perturb import DEFAULT_FRACTION

METRICS: Final = ("accuracy", "own", "oracle", "perturbed", "drop", "following")

# What is known of each committed simulator head (docs/quality/VALIDATION.md): LAS of human
# rationales against shuffled ones on the task's dev split.
SIMULATOR_VALIDATION: Final = {
    "creak": "validated: the CREAK head separates human from shuffled rationales on CREAK dev "
    "(LAS +0.110 [+0.080, +0.140])",
    "strategyqa": "not validated: on StrategyQA dev the simulator cannot tell human from shuffled "
    "rationales (docs/quality/VALIDATION.md)",
}
NOT_VALIDATED: Final = "not validated: no validation of this simulator on this task"
# The committed head each "validated" statement was measured with (the sha256 prefix that LAS
# results name it by): a head re-trained into the package is not the one validated.
VALIDATED_HEADS: Final = {"creak": "835e64a33e97cb79"}


def simulator_validation(info: SimulatorInfo | None, tasks: set[str]) -> str:
    """What is known of the simulator that gave a LAS on records of `tasks`: the validation of
    the task's committed head when that head, the very file validated, is what read them; else
    that nothing is known (a cross-fitted head, another reader, a zero-shot simulator, records of
    several tasks, or a head re-trained since were never validated here)."""
    if info is None or len(tasks) != 1:
        return NOT_VALIDATED
    task = next(iter(tasks))
    head = info.head or ""
    if info.kind != "trained" or not head.startswith(f"committed {task} head"):
        return NOT_VALIDATED
    validated = VALIDATED_HEADS.get(task)
    if validated is not None and f"sha256 {validated}" not in head:
        return NOT_VALIDATED
    return SIMULATOR_VALIDATION.get(task, NOT_VALIDATED)


class Student(Protocol):
    """What the evaluation asks of a student (`HFStudent` wraps a model folder)."""

    def generate(self, prompts: Sequence[str]) -> list[str]: ...

    def choose(
        self,
        prompts: Sequence[str],
        continuations: Sequence[str],
        options: Sequence[Sequence[str]],
    ) -> list[int]:
        """For each row, the option most likely after prompt + continuation (a seq2seq student
        encodes the prompt and forces the continuation on its decoder)."""
        ...

    def perturb(self, rationale: str, item_id: str, seed: int) -> str: ...


@dataclass(frozen=True)
class EvalItem:
    factual: RationaleRecord
    counterfactual: RationaleRecord | None


class ItemResult(BaseModel):
    item_id: str
    rationale: str  # the student's own
    answer: str  # parsed from its generation ("" when none)
    correct: bool
    own: bool | None = None
    oracle: bool | None = None
    perturbed: bool | None = None
    following: bool | None = None


class StudentEval(BaseModel):
    student: str
    items: int
    seed: int
    perturb_fraction: float
    metrics: dict[str, Estimate]
    las: LasResult | None = None
    simulator_validation: str | None = None
    results: list[ItemResult]
    # the simulator's predictions for each own rationale: what a paired LAS comparison resamples
    las_records: list[SimulatedRecord] | None = None


def eval_items(records: Sequence[RationaleRecord]) -> list[EvalItem]:
    """One item per factual record (first wins), with the item's first counterfactual record."""
    factual: dict[str, RationaleRecord] = {}
    counter: dict[str, RationaleRecord] = {}
    for rec in records:
        if rec.error is not None:
            continue
        side = counter if rec.tag is Tag.COUNTERFACTUAL else factual
        side.setdefault(rec.item_id, rec)
    return [EvalItem(f, counter.get(i)) for i, f in factual.items()]


def parse_generation(text: str) -> tuple[str, str]:
    """(rationale, answer) of a student's generation "[factual] <r> So the answer is <a>"."""
    body = text.strip()
    if body.startswith("[factual]"):
        body = body[len("[factual]") :]
    rationale, found, answer = body.partition(ANSWER_PREFIX)
    if not found:
        return " ".join(body.split()), ""
    answer = answer.strip().splitlines()[0] if answer.strip() else ""
    return " ".join(rationale.split()), answer.strip().rstrip(".").strip()


def forced_continuation(rationale: str) -> str:
    """The target up to the answer. An empty rationale (the `answer` student's) gives exactly
    what that student was trained on, not one with a doubled space."""
    return " ".join(part for part in ("[factual]", rationale, ANSWER_PREFIX) if part)


def forced_prefix(prompt: str, rationale: str) -> str:
    """The whole row up to the answer, as a causal student reads it."""
    return prompt + forced_continuation(rationale)


def _bootstrap(values: np.ndarray, reps: int, seed: int) -> Estimate:
    if values.size == 0:
        return Estimate(value=math.nan, low=math.nan, high=math.nan)
    rng = np.random.default_rng(seed)
    samples = values[rng.integers(0, values.size, size=(reps, values.size))].mean(axis=1)
    low, high = np.percentile(samples, [2.5, 97.5])
    return Estimate(
        value=round(float(values.mean()), 4), low=round(float(low), 4), high=round(float(high), 4)
    )


def item_value(r: ItemResult, metric: str) -> float:
    """One item's value of `metric`: 0/1 (drop: -1/0/1), nan where it does not apply."""
    if metric == "accuracy":
        return float(r.correct)
    if metric == "drop":
        if r.own is None or r.perturbed is None:
            return math.nan
        return float(r.own) - float(r.perturbed)
    v = getattr(r, metric)
    return math.nan if v is None else float(v)


def metric_vectors(results: Sequence[ItemResult]) -> dict[str, np.ndarray]:
    """Per-item values of each metric, over the items it applies to."""
    out = {}
    for m in METRICS:
        values = np.array([item_value(r, m) for r in results], float)
        out[m] = values[np.isfinite(values)]
    return out


def evaluate(
    student: Student,
    records: Sequence[RationaleRecord],
    *,
    name: str,
    seed: int = 0,
    reps: int = 1000,
    perturb_fraction: float = DEFAULT_FRACTION,
    las: Callable[[list[RationaleRecord]], tuple[LasResult, list[SimulatedRecord]]] | None = None,
) -> StudentEval:
    """Every metric of `student` on the items of `records` (see the module docstring)."""
    from contrail.distill.export import student_input

    items = eval_items(records)
    prompts = [f"{student_input(it.factual)}\n" for it in items]
    generated = [parse_generation(t) for t in student.generate(prompts)]
    results = [
        ItemResult(
            item_id=it.factual.item_id,
            rationale=rationale,
            answer=answer,
            correct=answer.casefold() == it.factual.gold_answer.casefold(),
        )
        for it, (rationale, answer) in zip(items, generated, strict=True)
    ]
    _forced(student, items, prompts, results, seed, perturb_fraction)
    own_records = _own_records(items, results)
    las_result, las_records = las(own_records) if las is not None and own_records else (None, None)
    tasks = {it.factual.task.value for it in items}
    return StudentEval(
        student=name,
        items=len(items),
        seed=seed,
        perturb_fraction=perturb_fraction,
        metrics={k: _bootstrap(v, reps, seed) for k, v in metric_vectors(results).items()},
        las=las_result,
        simulator_validation=(
            simulator_validation(las_result.simulator_info, tasks)
            if las_result is not None
            else None
        ),
        results=results,
        las_records=las_records,
    )


def _forced(
    student: Student,
    items: Sequence[EvalItem],
    prompts: Sequence[str],
    results: list[ItemResult],
    seed: int,
    fraction: float,
) -> None:
    """Fill own, oracle, perturbed and following for the items with options."""
    # (i, field, prompt, forced continuation, options, wanted answer)
    jobs: list[tuple[int, str, str, str, tuple[str, ...], str]] = []
    for i, (it, prompt, res) in enumerate(zip(items, prompts, results, strict=True)):
        opts = record_options(it.factual)
        if opts is None:
            continue
        gold = it.factual.gold_answer
        noisy = (
            student.perturb(res.rationale, it.factual.item_id, seed) if fraction else res.rationale
        )
        jobs += [
            (i, "own", prompt, forced_continuation(res.rationale), opts, gold),
            (i, "oracle", prompt, forced_continuation(it.factual.rationale), opts, gold),
            (i, "perturbed", prompt, forced_continuation(noisy), opts, gold),
        ]
        cf = it.counterfactual
        if cf is not None and cf.answer.casefold() in {o.casefold() for o in opts}:
            jobs.append(
                (i, "following", prompt, forced_continuation(cf.rationale), opts, cf.answer)
            )
    picks = (
        student.choose([j[2] for j in jobs], [j[3] for j in jobs], [j[4] for j in jobs])
        if jobs
        else []
    )
    for (i, field, _, _, opts, want), pick in zip(jobs, picks, strict=True):
        setattr(results[i], field, opts[pick].casefold() == want.casefold())


def _own_records(items: Sequence[EvalItem], results: Sequence[ItemResult]) -> list[RationaleRecord]:
    """The student's rationales as records for LAS: its answer as the rationalised one (items
    whose answer is none of the options are left out)."""
    out = []
    for it, res in zip(items, results, strict=True):
        opts = record_options(it.factual)
        if opts is None or not res.rationale:
            continue
        match = [o for o in opts if o.casefold() == res.answer.casefold()]
        if match:
            out.append(
                it.factual.model_copy(update={"rationale": res.rationale, "answer": match[0]})
            )
    return out


class Comparison(BaseModel):
    a: str
    b: str
    items: int
    differences: dict[str, Estimate]  # a - b; "las" when both have LAS
    las_items: int | None = None  # the items of the LAS difference (both gave an option)


def compare(a: StudentEval, b: StudentEval, *, reps: int = 1000, seed: int = 0) -> Comparison:
    """Metric(a) - metric(b) on the items both share, by a paired bootstrap: each resample of
    shared items feeds both sides."""
    by_id = {r.item_id: r for r in b.results}
    pairs = [(r, by_id[r.item_id]) for r in a.results if r.item_id in by_id]
    rng = np.random.default_rng(seed)
    out: dict[str, Estimate] = {}
    for metric in METRICS:
        va = np.array([item_value(p[0], metric) for p in pairs], float)
        vb = np.array([item_value(p[1], metric) for p in pairs], float)
        keep = np.isfinite(va) & np.isfinite(vb)
        va, vb = va[keep], vb[keep]
        if va.size == 0:
            out[metric] = Estimate(value=math.nan, low=math.nan, high=math.nan)
            continue
        sub = rng.integers(0, va.size, size=(reps, va.size))
        samples = va[sub].mean(axis=1) - vb[sub].mean(axis=1)
        low, high = np.percentile(samples, [2.5, 97.5])
        out[metric] = Estimate(
            value=round(float(va.mean() - vb.mean()), 4),
            low=round(float(low), 4),
            high=round(float(high), 4),
        )
    las_items = None
    if a.las_records is not None and b.las_records is not None:
        shared = {(r.item_id, r.tag) for r in b.las_records}
        las_items = sum((r.item_id, r.tag) in shared for r in a.las_records)
        out["las"] = paired_difference(a.las_records, b.las_records, reps=reps, seed=seed)["las"]
    return Comparison(
        a=a.student, b=b.student, items=len(pairs), differences=out, las_items=las_items
    )


__all__ = [
    "METRICS",
    "NOT_VALIDATED",
    "SIMULATOR_VALIDATION",
    "Comparison",
    "EvalItem",
    "ItemResult",
    "Student",
    "StudentEval",
    "compare",
    "eval_items",
    "evaluate",
    "forced_continuation",
    "forced_prefix",
    "parse_generation",
    "simulator_validation",
]
