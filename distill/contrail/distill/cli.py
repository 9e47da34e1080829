"""The distill part's commands, registered into the ``contrail`` CLI as a plugin (entry point
``contrail.cli``): ``eval`` (rationale quality of datasets or jobs), ``export`` (the student
export) and ``train`` (a student fine-tuned on a dataset or a job). Registering only builds
parsers; torch, transformers and the simulators are imported inside the commands."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from contrail.client.cli.base import UsageError, lazy
from contrail.client.cli.options import make_client
from contrail.client.cli.plugins import CommandRegistry
from contrail.client.jobs import DEFAULT_MODEL
from contrail.client.types import Job
from contrail.distill.options import (
    add_bootstrap_arguments,
    add_eval_arguments,
    add_export_arguments,
    add_simulator_arguments,
)


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


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune a student on a dataset file, a student export folder or a finished job
    (downloaded first, and fetched for the report's provenance)."""
    from pydantic import ValidationError

    student = lazy("contrail.distill.student.train", "train")
    fields = (
        "model", "objective", "alpha", "learning_rate", "batch_size", "epochs", "warmup_ratio",
        "max_grad_norm", "patience", "dev_fraction", "max_tokens", "seed", "device", "dtype",
        "lora_r", "lora_alpha",
    )  # fmt: skip
    try:
        config = student.TrainConfig(**{f: getattr(args, f) for f in fields})
    except ValidationError as exc:
        raise UsageError(str(exc)) from None
    with contextlib.ExitStack() as stack:
        job = None
        if Path(args.dataset).is_dir():  # a student export folder
            source = Path(args.dataset)
        else:
            source, job = _dataset_or_job(args, stack, "contrail-train-", fetch_job=True)
        try:
            report = student.train(source, Path(args.out_dir), config, resume=args.resume, job=job)
        except ValueError as exc:  # too few records for the objective, not an export
            raise UsageError(str(exc)) from None
    print(report.model_dump_json(indent=2, by_alias=True))
    return 0


def cmd_eval_student(args: argparse.Namespace) -> int:
    """Students on the held-out items of a dataset, with paired CIs against the first."""
    students: list[tuple[str, Path]] = []
    for spec in args.student:
        name, sep, folder = spec.partition("=")
        path = Path(folder if sep else name)
        if not (path / "config.json").is_file():
            raise UsageError(f"--student {spec}: no model folder at {path}")
        students.append((name if sep else path.parent.name or path.name, path))
    run = lazy("contrail.distill.student.run_eval", "eval")
    with contextlib.ExitStack() as stack:
        args.dataset, _ = _dataset_or_job(args, stack, "contrail-eval-student-")
        try:
            return int(run.run(args, students))
        except ValueError as exc:  # bad simulator options, no held-out items
            raise UsageError(str(exc)) from None


def _dataset_or_job(
    args: argparse.Namespace, stack: contextlib.ExitStack, prefix: str, *, fetch_job: bool = False
) -> tuple[Path, Job | None]:
    """`args.dataset` as a file: itself, or a finished job's records downloaded into a
    temporary folder that `stack` removes, with the job itself when `fetch_job` (None for a
    file)."""
    source = Path(args.dataset)
    if source.is_file():
        return source, None
    if source.suffix in (".jsonl", ".parquet"):
        raise UsageError(f"no such dataset file: {source}")
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
    with make_client(args) as client:  # not a file: a job id
        job = client.jobs.retrieve(args.dataset) if fetch_job else None
        return client.jobs.download(args.dataset, tmp / f"{args.dataset}.jsonl"), job


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dataset",
        help="dataset .jsonl/.parquet file, a student export folder (contrail export) or a "
        "finished job's id",
    )
    p.add_argument("--out-dir", type=Path, required=True, help="the run folder")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="student (causal or seq2seq): name, folder or Hub id"
    )
    p.add_argument("--objective", choices=["scott", "factual", "answer"], default="scott")
    p.add_argument("--alpha", type=float, default=0.5, help="counterfactual weight (scott)")
    p.add_argument("--learning-rate", type=float, default=3e-5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--warmup-ratio", type=float, default=0.06, help="of all steps")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping")
    p.add_argument("--patience", type=int, default=2, help="early stopping, in epochs")
    p.add_argument("--dev-fraction", type=float, default=0.1, help="items held out for dev loss")
    p.add_argument("--max-tokens", type=int, default=512, help="longer rows are left out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: full tuning)")
    p.add_argument("--lora-alpha", type=int, default=16, help="LoRA scaling (with --lora-r)")
    p.add_argument("--resume", action="store_true", help="from the run folder's last checkpoint")


def register(registry: CommandRegistry) -> None:
    conn = registry.connection

    p = registry.add(
        "eval",
        parents=[conn],
        help="rationale quality of datasets or jobs: signals, LAS (docs/QUALITY.md)",
    )
    add_eval_arguments(p, job_ids=True)
    p.set_defaults(func=cmd_eval)

    p = registry.add(
        "export",
        help="student-training export of a dataset: train/dev JSONL + Parquet, and the same "
        "rows for TRL, axolotl, LLaMA-Factory and the reference release",
    )
    add_export_arguments(p)
    p.set_defaults(func=cmd_export)

    p = registry.add(
        "train",
        parents=[conn],
        help="fine-tune a student on a dataset, a student export or a job: scott, factual or "
        "answer objective",
    )
    _add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = registry.add(
        "eval-student",
        parents=[conn],
        help="students on held-out items: accuracy, oracle, perturbed drop, counterfactual "
        "following, LAS; paired bootstrap CIs against the first student",
    )
    p.add_argument(
        "dataset", help="dataset .jsonl/.parquet file or a finished job's id (its held-out items)"
    )
    p.add_argument(
        "--student", action="append", required=True,
        help="NAME=FOLDER or FOLDER (a run's model/ folder); repeat to compare",
    )  # fmt: skip
    p.add_argument(
        "--split", choices=["dev", "all"], default="dev",
        help="dev (default): the items contrail train held out with the same --dev-fraction and "
        "--seed; all: every item (a dataset the students never saw)",
    )  # fmt: skip
    p.add_argument("--dev-fraction", type=float, default=0.1)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--device", default="cpu")
    add_simulator_arguments(p)
    add_bootstrap_arguments(p)
    p.add_argument("--json", type=Path, default=None, help="write evaluations + comparisons")
    p.set_defaults(func=cmd_eval_student)
