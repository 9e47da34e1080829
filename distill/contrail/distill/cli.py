"""The distill part's commands, registered into the ``contrail`` CLI as a plugin (entry point
``contrail.cli``): ``eval`` (rationale quality of datasets or jobs) and ``export`` (the student
export). Registering only builds parsers; torch and the simulators are imported inside the
commands."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from contrail.client.cli.base import UsageError, lazy
from contrail.client.cli.options import make_client
from contrail.client.cli.plugins import CommandRegistry
from contrail.distill.options import add_export_arguments, add_simulator_arguments


def cmd_eval(args: argparse.Namespace) -> int:
    """Rationale quality of dataset files or finished jobs (a job id is downloaded first)."""
    evaluation = lazy("contrail.distill.report", "eval")
    with contextlib.ExitStack() as stack:
        paths: list[Path] = []
        for src in args.datasets:
            if Path(src).is_file():
                paths.append(Path(src))
                continue
            if Path(src).suffix in (".jsonl", ".parquet"):
                raise UsageError(f"no such dataset file: {src}")
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="contrail-eval-")))
            with make_client(args) as client:  # not a file: a job id
                paths.append(client.jobs.download(src, tmp / f"{src}.jsonl", format="jsonl"))
        args.datasets = paths
        if args.train_data is not None and not Path(args.train_data).is_file():
            raise UsageError(f"--train-data: no such file: {args.train_data}")
        try:
            return int(evaluation.run_eval(args))
        except (ValueError, FileNotFoundError) as exc:  # bad simulator options, too few records
            raise UsageError(str(exc)) from None


def cmd_export(args: argparse.Namespace) -> int:
    """The student-training export of a dataset file (docs/METHOD.md section 3)."""
    if not Path(args.dataset).is_file():
        raise UsageError(f"no such dataset file: {args.dataset}")
    evaluation = lazy("contrail.distill.report", "eval")
    args.dataset = Path(args.dataset)
    args.out_dir = Path(args.out_dir)
    return int(evaluation.run_export(args))


def register(registry: CommandRegistry) -> None:
    conn = registry.connection

    p = registry.add(
        "eval",
        parents=[conn],
        help="rationale quality of datasets or jobs: signals, LAS (docs/QUALITY.md)",
    )
    p.add_argument("datasets", nargs="+", help="dataset .jsonl/.parquet files or job ids")
    add_simulator_arguments(p)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the summaries here")
    p.add_argument("--report-dir", type=Path, default=None, help="write report.md + report.png")
    p.set_defaults(func=cmd_eval)

    p = registry.add(
        "export",
        help="student-training export of a dataset: train/dev JSONL + Parquet, and the same "
        "rows for TRL, axolotl, LLaMA-Factory and the reference release",
    )
    add_export_arguments(p)
    p.set_defaults(func=cmd_export)
