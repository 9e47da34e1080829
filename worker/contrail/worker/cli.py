"""The worker part's commands, registered into the ``contrail`` CLI as a plugin
(entry point ``contrail.cli``): ``serve worker``, ``generate`` (offline), ``eval``, ``export``
and ``models prepare``. Registering only builds parsers; torch, vLLM and the engines are imported
inside the commands."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from contrail.client.cli.base import EXIT_OK, CommandFailed, UsageError, lazy, print_json
from contrail.client.cli.options import decoding_settings, make_client, task_arg
from contrail.client.cli.plugins import CommandRegistry
from contrail.client.jobs import DEFAULT_MODEL
from contrail.client.types import TaskName
from contrail.worker.eval_options import add_simulator_arguments


def cmd_serve_worker(args: argparse.Namespace) -> int:
    entry = lazy("contrail.worker.__main__", "worker")
    argv: list[str] = []
    if args.model:
        argv += ["--model", args.model]
    if args.engine:
        argv += ["--engine", args.engine]
    if args.check:
        argv.append("--check")
    if args.burst:
        argv.append("--burst")
    return int(entry.main(argv) or 0)


def cmd_models_prepare(args: argparse.Namespace) -> int:
    models = lazy("contrail.worker.models", "worker")
    hub = lazy("contrail.worker.hub", "worker")
    started = time.monotonic()
    print(f"preparing {args.name or DEFAULT_MODEL} ...", file=sys.stderr)
    try:
        spec = models.prepare_model(args.name, args.cache_dir, force=args.force)
    except (ValueError, FileNotFoundError) as exc:  # unknown name, not a model folder
        raise UsageError(str(exc)) from None
    except hub.HubError as exc:  # not cached offline, no network, not on the Hub
        raise CommandFailed(f"error: {exc}") from None
    print(f"{spec.name}: {spec.path}  ({time.monotonic() - started:.1f}s)")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """Rationale quality of dataset files or finished jobs (a job id is downloaded first)."""
    evaluation = lazy("contrail.worker.evaluation", "worker")
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
    evaluation = lazy("contrail.worker.evaluation", "worker")
    args.dataset = Path(args.dataset)
    args.out_dir = Path(args.out_dir)
    return int(evaluation.run_export(args))


def cmd_generate(args: argparse.Namespace) -> int:
    src = Path(args.input)
    if not src.is_file():
        raise UsageError(f"no such input file: {src}")
    out = Path(args.output)
    if out.suffix.lower() not in (".jsonl", ".parquet", ""):
        raise UsageError("--output must end in .jsonl or .parquet (both are written)")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    settings = decoding_settings(args)
    offline = lazy("contrail.worker.offline", "worker")
    try:
        summary = offline.run_generate(
            src,
            out,
            TaskName(args.task),
            settings,
            fmt=args.format,
            model=args.model,
            engine=args.engine or "auto",
            limit=args.limit,
            parquet=not args.no_parquet,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    except (ValueError, FileNotFoundError) as exc:  # unknown model, bad file, unknown format
        raise CommandFailed(f"error: {exc}") from None
    print_json(summary)
    return EXIT_OK


def register(registry: CommandRegistry) -> None:
    conn = registry.connection
    p = registry.add_to(
        "serve",
        "worker",
        help="run a queue worker; settings from CONTRAIL_* environment variables",
    )
    p.add_argument("--model", default=None, help="model to serve (default $CONTRAIL_MODEL)")
    p.add_argument("--engine", choices=["vllm", "reference"], default=None)
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if a worker on this host has a fresh health record (container healthcheck)",
    )
    p.add_argument("--burst", action="store_true", help="drain the queue, then exit")
    p.set_defaults(func=cmd_serve_worker)

    p = registry.add_to(
        "models",
        "prepare",
        help="convert and cache a model for the workers; fetch a Hub id into the HF cache",
    )
    p.add_argument(
        "name",
        nargs="?",
        default=None,
        help=f"model: smollm2-135m, tiny, a Hub id org/name[@revision] or a folder "
        f"(default {DEFAULT_MODEL})",
    )
    p.add_argument("--cache-dir", default=None, help="cache folder (default CONTRAIL_CACHE_DIR)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_models_prepare)

    # -- quality ------------------------------------------------------------------------------
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
        "export", help="student-training export of a dataset: train/dev JSONL + Parquet"
    )
    p.add_argument("dataset", help="dataset .jsonl or .parquet file")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--dev-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-parquet", action="store_true")
    p.set_defaults(func=cmd_export)

    # -- offline ------------------------------------------------------------------------------
    p = registry.add(
        "generate",
        parents=[registry.decoding],
        help="decode an input file offline (no server) into a dataset",
        description="Generate rationales for an input file on this machine, without a server: "
        "writes the dataset as JSONL and Parquet.",
    )
    p.add_argument("input", help="input JSONL file (any supported task format)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="dataset path: X.jsonl writes X.jsonl, X.parquet and X.errors.jsonl",
    )
    p.add_argument("--task", type=task_arg, default=TaskName.GENERIC.value)
    p.add_argument(
        "--format", default=None, help="input format (default: detected, e.g. strategyqa)"
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model (default {DEFAULT_MODEL})")
    p.add_argument(
        "--engine",
        choices=["auto", "vllm", "reference"],
        default=None,
        help="decoding engine (default auto: vllm if installed)",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--no-parquet", action="store_true", help="write JSONL only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)
