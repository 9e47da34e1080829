"""Markdown tables of a student experiment's results file (bench/student.py), for
docs/quality/STUDENT.md: every number printed is a field of the file, at the precision the page
quotes.

    .venv/bin/python bench/student_report.py docs/quality/student-creak.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

COLUMNS = [
    ("accuracy", "accuracy"),
    ("oracle", "oracle (teacher's rationale)"),
    ("perturbed", "perturbed (own, 50% tokens random)"),
    ("drop", "perturbed drop"),
    ("following", "counterfactual following"),
]


def ci(e: dict[str, float] | None, signed: bool = False) -> str:
    if e is None or e["value"] is None or math.isnan(e["value"]):
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(e['value'])} [{f.format(e['low'])}, {f.format(e['high'])}]"


def students_table(runs: list[dict[str, Any]]) -> str:
    head = ["student", "objective", "teacher data", "seed", *(c[1] for c in COLUMNS), "LAS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in (r for r in runs if "student" in r):
        metrics = run["eval"]["metrics"]
        las = (run["eval"].get("las") or {}).get("las")
        cells = [
            f"`{run['student']}`",
            run["objective"],
            run["teacher_data"],
            str(run["seed"]),
            *(ci(metrics.get(key), signed=key == "drop") for key, _ in COLUMNS),
            ci(las, signed=True),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons_table(runs: list[dict[str, Any]]) -> str:
    head = ["a - b", "seed", "items", *(c[1] for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in (r for r in runs if "comparison" in r):
        c = run["comparison"]
        cells = [
            f"`{c['a']}` - `{c['b']}`",
            str(run["seed"]),
            str(c["items"]),
            *(ci(c["differences"].get(key), signed=True) for key, _ in COLUMNS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("results", type=Path, nargs="+")
    args = p.parse_args(argv)
    for path in args.results:
        data = json.loads(path.read_text())
        print(f"## {path.name} ({data['provenance']['sha'][:10]}, {data['eval_items']} items)\n")
        print(students_table(data["runs"]) + "\n")
        print(comparisons_table(data["runs"]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
