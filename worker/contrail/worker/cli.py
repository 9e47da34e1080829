"""The worker part's commands, registered into the ``contrail`` CLI as a plugin
(entry point ``contrail.cli``): ``serve worker``, ``serve finalizer``, ``generate`` (offline) and
``models prepare`` (``eval`` and ``export`` are the distill part's: `contrail.distill.cli`).
Registering only builds parsers; torch, vLLM and the engines are imported inside the commands."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from contrail.client.cli.base import EXIT_OK, CommandFailed, UsageError, lazy, print_json
from contrail.client.cli.options import decoding_settings, task_arg
from contrail.client.cli.plugins import CommandRegistry
from contrail.client.jobs import DEFAULT_MODEL
from contrail.client.types import TaskName


def cmd_serve_worker(args: argparse.Namespace) -> int:
    """`serve worker` and `serve finalizer` (set_defaults(finalizer=True)): the worker's entry
    point with the flags given."""
    entry = lazy("contrail.worker.__main__", "worker")
    argv: list[str] = ["--finalizer"] if getattr(args, "finalizer", False) else []
    if getattr(args, "model", None):
        argv += ["--model", args.model]
    if getattr(args, "engine", None):
        argv += ["--engine", args.engine]
    if args.check:
        argv.append("--check")
    if args.burst:
        argv.append("--burst")
    return int(entry.main(argv) or 0)


def cmd_models_prepare(args: argparse.Namespace) -> int:
    models = lazy("contrail.worker.models", "worker")
    hub = lazy("contrail.worker.models.hub", "worker")
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
    offline = lazy("contrail.worker.generation.offline", "worker")
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
    p = registry.add_to(
        "serve",
        "worker",
        help="run a queue worker; settings from CONTRAIL_* environment variables",
    )
    p.add_argument("--model", default=None, help="model to serve (default $CONTRAIL_MODEL)")
    p.add_argument("--engine", choices=["vllm", "reference", "simulated"], default=None)
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if a worker on this host has a fresh health record (container healthcheck)",
    )
    p.add_argument("--burst", action="store_true", help="drain the queue, then exit")
    p.set_defaults(func=cmd_serve_worker)

    p = registry.add_to(
        "serve",
        "finalizer",
        help="run a finalizer: merges finished jobs' datasets (no engine, no GPU); settings "
        "from CONTRAIL_* environment variables",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if a finalizer on this host has a fresh health record (healthcheck)",
    )
    p.add_argument("--burst", action="store_true", help="drain the finalize queue, then exit")
    p.set_defaults(func=cmd_serve_worker, finalizer=True)

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
