"""The client commands: they talk to an API server through the SDK (submit, status, wait,
results, errors, dataset, cancel, delete, resubmit, jobs, models, files)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from contrail.client._client import Client
from contrail.client.cli.base import (
    EXIT_JOB_NOT_COMPLETED,
    EXIT_OK,
    UsageError,
    err,
    fmt_time,
    print_json,
)
from contrail.client.cli.options import (
    decoding_settings,
    json_flag,
    make_client,
    task_arg,
    wait_flags,
)
from contrail.client.cli.plugins import CommandRegistry
from contrail.client.helpers import format_for_path, record_rows
from contrail.client.jobs import DEFAULT_MODEL
from contrail.client.types import FileObject, Job, JobStatus, TaskName


def _job_line(job: Job) -> str:
    c = job.request_counts
    return (
        f"{job.id}  {job.status.value:<11}  {c.completed + c.failed}/{c.total} "
        f"(failed {c.failed})  {job.task.value}  {job.model}  {fmt_time(job.created_at)}"
    )


def _print_job(job: Job) -> None:
    c = job.request_counts
    print(f"job       {job.id}")
    print(f"status    {job.status.value}")
    print(f"task      {job.task.value}    model {job.model}")
    d = job.decoding
    print(
        f"decoding  {d.mode.value}, perturbation {d.perturbation.value}, lambda {d.lam}, "
        f"alpha {d.alpha}, max_new_tokens {d.max_new_tokens}, "
        f"counterfactual_fraction {d.counterfactual_fraction}"
    )
    print(f"progress  {c.completed} completed, {c.failed} failed, {c.total} total")
    print(f"tokens    {job.usage.prompt_tokens} prompt, {job.usage.completion_tokens} completion")
    print(f"created   {fmt_time(job.created_at)}")
    if job.completed_at:
        print(f"completed {fmt_time(job.completed_at)}")
    elif job.status.terminal:
        ended = job.cancelled_at or job.expired_at or job.failed_at
        print(f"{job.status.value:<9} {fmt_time(ended)}")
    elif job.expires_at:
        print(f"expires   {fmt_time(job.expires_at)}  (window {job.completion_window})")
    if job.error:
        print(f"error     {job.error}")


def _finish_wait(job: Job) -> int:
    if job.status is JobStatus.COMPLETED:
        return EXIT_OK
    err(f"job {job.id} ended {job.status.value}" + (f": {job.error}" if job.error else ""))
    return EXIT_JOB_NOT_COMPLETED


def cmd_submit(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"no such input file: {path}")
    decoding = decoding_settings(args)
    metadata = _parse_metadata(args.metadata)
    template = _template(args)
    with make_client(args) as client:
        uploaded: FileObject = client.files.upload(path, task=args.task)
        if not args.json:
            print(f"uploaded  {uploaded.id}  ({uploaded.lines} items, format {uploaded.format})")
        job = client.jobs.create(
            input_file_id=uploaded.id,
            task=args.task,
            model=args.model,
            decoding=decoding,
            metadata=metadata,
            completion_window=args.completion_window,
            idempotency_key=args.idempotency_key,
            quality={"las": True} if args.las else None,
            template=template,
        )
        if not args.wait:
            if args.json:
                print_json(job)
            else:
                print(f"job       {job.id}  ({job.status.value}, {job.request_counts.total} total)")
                print(f"next:     contrail wait {job.id}; contrail results {job.id} -o out.parquet")
            return EXIT_OK
        if not args.json:
            print(f"job       {job.id}")
        job = _wait_job(client, job.id, args)
        _show_job(job, args)
        code = _finish_wait(job)
        if code == EXIT_OK and args.output:
            out = client.jobs.download(job.id, args.output)
            print(f"saved     {out}")
        return code


def _show_job(job: Job, args: argparse.Namespace) -> None:
    if args.json:
        print_json(job)
    else:
        _print_job(job)


def _wait_job(client: Client, job_id: str, args: argparse.Namespace) -> Job:
    """Wait with the progress bar on an interactive terminal (`--no-progress` turns it off)."""
    return client.jobs.wait(
        job_id,
        timeout=args.wait_timeout,
        poll_interval=args.poll_interval,
        progress=not args.no_progress and sys.stderr.isatty(),
    )


def _template(args: argparse.Namespace) -> str | None:
    if args.template is not None and args.template_file is not None:
        raise UsageError("give --template or --template-file, not both")
    if args.template_file is None:
        return str(args.template) if args.template is not None else None
    path = Path(args.template_file)
    if not path.is_file():
        raise UsageError(f"no such template file: {path}")
    # A trailing newline is the file's, not the template's (it must not end in whitespace).
    return path.read_text(encoding="utf-8").rstrip("\n")


def _parse_metadata(pairs: Sequence[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--metadata wants KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def cmd_status(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        job = client.jobs.retrieve(args.job_id)
    _show_job(job, args)
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        job = _wait_job(client, args.job_id, args)
    _show_job(job, args)
    return _finish_wait(job)


def cmd_results(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        if args.output:
            try:
                format_for_path(args.output, args.format)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            out = client.jobs.download(args.job_id, args.output, format=args.format)
            print(f"saved {out}", file=sys.stderr)
            return EXIT_OK
        if args.format == "parquet":
            raise UsageError("Parquet needs a file: pass -o PATH.parquet")
        for n, row in enumerate(record_rows(client.jobs.results(args.job_id)), start=1):
            print(json.dumps(row, ensure_ascii=False))
            if args.limit is not None and n >= args.limit:
                break
    return EXIT_OK


def cmd_errors(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        for error in client.jobs.errors(args.job_id):
            print(error.model_dump_json(exclude_none=True))
    return EXIT_OK


def cmd_dataset(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        location = client.jobs.dataset(args.job_id)
    if args.json:
        print_json(location)
        return EXIT_OK
    for role, url in (
        ("jsonl", location.jsonl_url),
        ("parquet", location.parquet_url),
        ("errors", location.errors_url),
        ("manifest", location.manifest_url),
    ):
        print(f"{role:<9} {url or '-'}")
    if location.expires_at:
        print(f"expires   {fmt_time(location.expires_at)}")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        job = client.jobs.cancel(args.job_id)
    if args.json:
        print_json(job)
    else:
        print(f"job {job.id}: {job.status.value}")
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        page = client.jobs.list(limit=args.limit)
        jobs = list(page) if args.all else page.data
    if args.json:
        print_json([j.model_dump(mode="json", by_alias=True) for j in jobs])
        return EXIT_OK
    if not jobs:
        print("no jobs")
    for job in jobs:
        print(_job_line(job))
    if not args.all and page.has_more:
        print(f"(more: contrail jobs --all, or --limit {args.limit * 2})", file=sys.stderr)
    return EXIT_OK


def cmd_models_list(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        models = client.models.list()
    if args.json:
        print_json(models)
        return EXIT_OK
    if not models.data:
        print("no live workers")
    for m in models.data:
        print(f"{m.id}  ({m.workers} worker{'s' if m.workers != 1 else ''})")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        deleted = client.files.delete(args.id) if args.file else client.jobs.delete(args.id)
    if args.json:
        print_json(deleted)
    else:
        print(f"deleted {deleted.id}")
    return EXIT_OK


def cmd_resubmit(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        job = client.jobs.resubmit(args.job_id)
        if args.json:
            print_json(job)
        else:
            print(
                f"job       {job.id}  ({job.request_counts.total} rationales, from {args.job_id})"
            )
        if not args.wait:
            return EXIT_OK
        job = _wait_job(client, job.id, args)
    _show_job(job, args)
    return _finish_wait(job)


def register(registry: CommandRegistry) -> None:
    """The client commands, in the order `contrail --help` lists them; `models` and its `list`
    also open the `models` group."""
    _register_submit(registry)
    _register_job_commands(registry)
    _register_listings(registry)


def _register_submit(registry: CommandRegistry) -> None:
    p = registry.commands.add_parser(
        "submit",
        parents=[registry.connection, registry.decoding],
        help="upload an input file and create a job",
        description="Upload an input file (JSON lines, a JSON array or Parquet, optionally "
        "gzip-compressed; records in any supported task format) and create a "
        "rationale-generation job.",
    )
    p.add_argument(
        "file", help="input: .jsonl, .json (array), .parquet, any of them .gz; format detected"
    )
    p.add_argument("--task", type=task_arg, default=TaskName.GENERIC.value, help="task family")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model (default {DEFAULT_MODEL})")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="repeatable")
    p.add_argument(
        "--template",
        default=None,
        help="prompt block template with {question}, {choices}, {answer} (docs/API.md)",
    )
    p.add_argument("--template-file", default=None, help="read the template from a file")
    p.add_argument(
        "--completion-window",
        default="24h",
        help="time the job may take before it ends expired (e.g. 24h, 90m, 7d; default 24h)",
    )
    p.add_argument("--idempotency-key", default=None)
    p.add_argument(
        "--las",
        action="store_true",
        help="compute LAS at finalization into the manifest (runs a model over every record)",
    )
    p.add_argument("--wait", action="store_true", help="wait for the job with a progress bar")
    p.add_argument(
        "-o", "--output", default=None, help="with --wait: save the dataset (.jsonl/.parquet)"
    )
    wait_flags(p)
    json_flag(p)
    p.set_defaults(func=cmd_submit)


def _register_job_commands(registry: CommandRegistry) -> None:
    """The commands on one job (or file) by id."""
    conn = registry.connection
    sub = registry.commands
    p = sub.add_parser("status", parents=[conn], help="show a job")
    p.add_argument("job_id")
    json_flag(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("wait", parents=[conn], help="wait for a job with a progress bar")
    p.add_argument("job_id")
    wait_flags(p)
    json_flag(p)
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser(
        "results",
        parents=[conn],
        help="print a job's records as JSONL, or save them (-o out.jsonl / out.parquet)",
    )
    p.add_argument("job_id")
    p.add_argument("-o", "--output", default=None, help="file to write (.jsonl or .parquet)")
    p.add_argument("--format", choices=["jsonl", "parquet"], default=None, help="override suffix")
    p.add_argument("--limit", type=int, default=None, help="print at most N records")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("errors", parents=[conn], help="print a job's per-item errors as JSONL")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_errors)

    p = sub.add_parser("dataset", parents=[conn], help="where a job's dataset files are (URLs)")
    p.add_argument("job_id")
    json_flag(p)
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("cancel", parents=[conn], help="cancel a job")
    p.add_argument("job_id")
    json_flag(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "delete",
        parents=[conn],
        help="delete a finished job (or, with --file, a file) and its data",
    )
    p.add_argument("id", help="job id (or file id with --file)")
    p.add_argument("--file", action="store_true", help="the id is an uploaded file's")
    json_flag(p)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser(
        "resubmit",
        parents=[conn],
        help="new job over a finished job's failed (or, if cancelled/expired, unfinished) items",
    )
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true", help="wait for the new job")
    wait_flags(p)
    json_flag(p)
    p.set_defaults(func=cmd_resubmit)


def _register_listings(registry: CommandRegistry) -> None:
    conn = registry.connection
    sub = registry.commands
    p = sub.add_parser("jobs", parents=[conn], help="list jobs, newest first")
    p.add_argument("--limit", type=int, default=20, help="page size (default 20)")
    p.add_argument("--all", action="store_true", help="walk every page")
    json_flag(p)
    p.set_defaults(func=cmd_jobs)

    models = sub.add_parser(
        "models", parents=[conn], help="list served models; `models prepare` caches one"
    )
    json_flag(models)
    models.set_defaults(func=cmd_models_list)
    registry.groups["models"] = models.add_subparsers(
        dest="models_command", metavar="ACTION", parser_class=type(models)
    )
    p = registry.groups["models"].add_parser(
        "list", parents=[conn], help="models that live workers serve"
    )
    json_flag(p)
    p.set_defaults(func=cmd_models_list)
