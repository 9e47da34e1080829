"""`contrail eval-student`'s work, and its Python API: load the held-out items, evaluate each
student, compare every other student with the first, print a table and write the JSON.

    from contrail.distill.simulators import TrainedSimulator
    from contrail.distill.student.run_eval import eval_students

    students = [("scott", Path("runs/scott/model")), ("base", Path("runs/base/model"))]
    result = eval_students(
        Path("data.jsonl"), students, simulator=TrainedSimulator("smollm2-135m")  # None: no LAS
    )
    result.comparisons[0].differences["following"]  # base - scott, paired bootstrap CI
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from contrail.client.types import RationaleRecord
from contrail.distill.export import load_records
from contrail.distill.las import (
    Estimate,
    LasResult,
    RecordSimulator,
    SimulatedRecord,
    Simulator,
    evaluate_las,
)
from contrail.distill.student.evaluate import (
    METRICS,
    Comparison,
    StudentEval,
    compare,
    evaluate,
)
from contrail.distill.student.examples import split_records
from contrail.distill.student.hf import HFStudent

EvalSplit = Literal["dev", "all"]


class StudentsEvaluation(BaseModel):
    """What `eval_students` returns and `--json` writes."""

    dataset: str
    split: EvalSplit
    evaluations: list[StudentEval]
    comparisons: list[Comparison]  # every other student - the first, on the items they share


def held_out(
    dataset: Path, *, split: EvalSplit = "dev", dev_fraction: float = 0.1, seed: int = 0
) -> list[RationaleRecord]:
    """The records of the items `contrail train` held out with the same `dev_fraction` and
    `seed` (split "dev"), or every record without an error ("all")."""
    records = load_records(dataset)
    if split == "all":
        return [r for r in records if r.error is None]
    dev = split_records(records, dev_fraction=dev_fraction, seed=seed)["dev"]
    if not dev:
        raise ValueError(f"no held-out items at --dev-fraction {dev_fraction}")
    return dev


def eval_students(
    dataset: Path,
    students: Sequence[tuple[str, Path]],
    *,
    split: EvalSplit = "dev",
    dev_fraction: float = 0.1,
    seed: int = 0,
    max_new_tokens: int = 96,
    device: str = "cpu",
    simulator: Simulator | RecordSimulator | None = None,
    bootstrap: int = 1000,
) -> StudentsEvaluation:
    """Every metric of each (name, model folder) on the held-out items of `dataset`, LAS with
    `simulator` (None: none), and paired bootstrap CIs of every other student against the first.
    """
    if not students:
        raise ValueError("no student to evaluate")
    records = held_out(dataset, split=split, dev_fraction=dev_fraction, seed=seed)

    def las(recs: list[RationaleRecord]) -> tuple[LasResult, list[SimulatedRecord]]:
        assert simulator is not None
        return evaluate_las(recs, simulator, reps=bootstrap, seed=seed)

    evals = [
        evaluate(
            HFStudent(folder, device=device, max_new_tokens=max_new_tokens),
            records,
            name=name,
            seed=seed,
            reps=bootstrap,
            las=las if simulator is not None else None,
        )
        for name, folder in students
    ]
    comparisons = [compare(ev, evals[0], reps=bootstrap, seed=seed) for ev in evals[1:]]
    return StudentsEvaluation(
        dataset=str(dataset), split=split, evaluations=evals, comparisons=comparisons
    )


def _cell(e: Estimate) -> str:
    return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"


def table(evals: Sequence[StudentEval]) -> str:
    head = ["student", *METRICS, "LAS", "simulator"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ev in evals:
        las = _cell(ev.las.las) if ev.las is not None else "—"
        cells = [ev.student, *(_cell(ev.metrics[m]) for m in METRICS), las]
        lines.append("| " + " | ".join([*cells, ev.simulator_validation or "—"]) + " |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, students: Sequence[tuple[str, Path]]) -> int:
    """The command: `eval_students` with the command's options, printed and written."""
    from contrail.distill.report import build_simulator

    result = eval_students(
        Path(args.dataset),
        students,
        split=args.split,
        dev_fraction=args.dev_fraction,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        simulator=build_simulator(args),
        bootstrap=args.bootstrap,
    )
    print(table(result.evaluations), end="")
    for c in result.comparisons:
        diffs = ", ".join(f"{m} {_cell(c.differences[m])}" for m in METRICS)
        if "las" in c.differences:
            diffs += f", LAS {_cell(c.differences['las'])} on {c.las_items} items"
        print(f"{c.a} - {c.b} on {c.items} items: {diffs}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return 0


__all__ = ["EvalSplit", "StudentsEvaluation", "eval_students", "held_out", "run", "table"]
