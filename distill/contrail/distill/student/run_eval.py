"""The `contrail eval-student` command's work: load the held-out items, evaluate each student,
compare every student with the first, print a table and write the JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from contrail.client.types import RationaleRecord
from contrail.distill.export import load_records
from contrail.distill.las import Estimate, LasResult, evaluate_las
from contrail.distill.student.evaluate import METRICS, StudentEval, compare, evaluate
from contrail.distill.student.examples import split_records
from contrail.distill.student.hf import HFStudent


def held_out(args: argparse.Namespace) -> list[RationaleRecord]:
    records = load_records(Path(args.dataset))
    if args.split == "all":
        return [r for r in records if r.error is None]
    dev = split_records(records, dev_fraction=args.dev_fraction, seed=args.seed)["dev"]
    if not dev:
        raise ValueError(f"no held-out items at --dev-fraction {args.dev_fraction}")
    return dev


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
    from contrail.distill.report import build_simulator

    records = held_out(args)
    simulator = build_simulator(args)

    def las(recs: list[RationaleRecord]) -> LasResult:
        assert simulator is not None
        return evaluate_las(recs, simulator, reps=args.bootstrap, seed=args.seed)[0]

    evals = [
        evaluate(
            HFStudent(folder, device=args.device, max_new_tokens=args.max_new_tokens),
            records,
            name=name,
            seed=args.seed,
            reps=args.bootstrap,
            las=las if simulator is not None else None,
        )
        for name, folder in students
    ]
    comparisons = [compare(ev, evals[0], reps=args.bootstrap, seed=args.seed) for ev in evals[1:]]
    print(table(evals), end="")
    for c in comparisons:
        diffs = ", ".join(f"{m} {_cell(c.differences[m])}" for m in METRICS)
        print(f"{c.a} - {c.b} on {c.items} items: {diffs}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "dataset": str(args.dataset),
            "split": args.split,
            "evaluations": [e.model_dump(mode="json") for e in evals],
            "comparisons": [c.model_dump(mode="json") for c in comparisons],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


__all__ = ["held_out", "run", "table"]
