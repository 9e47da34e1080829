"""`contrail up`: the whole stack on one machine without Docker (an embedded Valkey with AOF,
local-disk storage, the API, a finalizer and one worker), supervised until Ctrl-C or SIGTERM.

A server-side command (the service extra: it runs the API and needs the embedded Valkey), so it
lives here and is registered into the ``contrail`` CLI by ``contrail.service.cli``. The parts are
children of contrail.core.processes' :class:`Supervisor`, the same process code the test servers
use: each in its own session (a terminal's Ctrl-C reaches `up` only, which stops them in reverse
order) with a parent-death signal, so none outlives `up`. Once the stack is up, a worker,
finalizer or API that exits is restarted with exponential backoff and the console says so: a job
that OOM-kills its worker must not stop the whole stack. Valkey exiting stops the stack (its data
is the state of everything else).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn

import httpx

from contrail.client._base import ENV_API_KEY, ENV_BASE_URL
from contrail.client.cli.base import (
    EXIT_ENGINE_STALLED,
    EXIT_FAILURE,
    EXIT_OK,
    CommandFailed,
    UsageError,
    err,
    lazy,
)
from contrail.client.cli.plugins import CommandRegistry
from contrail.client.jobs import DEFAULT_MODEL
from contrail.core.processes import ProcessExited, Supervisor, valkey_server_path, wait_until

DEFAULT_STATE_DIR = ".contrail/local"
LOCAL_TENANT = "local"
EXIT_REASONS = {
    -signal.SIGKILL: " (killed: out of memory, or kill -9)",
    EXIT_ENGINE_STALLED: " (its engine stalled: no decoding step for CONTRAIL_ENGINE_STALL_S; "
    "it gave its shards back)",
}


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


def _redis_ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _report(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _wait_for(
    what: str, ready: Callable[[], bool], stack: Supervisor, timeout: float, poll: float = 0.2
) -> None:
    """Until ``ready``; a part that exits meanwhile ends the wait (ProcessExited)."""
    try:
        wait_until(ready, timeout, what, alive=stack.check_alive, poll=poll)
    except TimeoutError:
        raise CommandFailed(f"{what} was not ready after {timeout:.0f}s") from None


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


@dataclass(frozen=True)
class _UpPlan:
    """Where and how `contrail up` runs its parts (decided before anything starts)."""

    state_dir: Path
    api_key: str
    redis_port: int
    engine: str
    base_url: str
    env: dict[str, str]

    @property
    def info_file(self) -> Path:
        return self.state_dir / "up.json"


def _plan(args: argparse.Namespace) -> _UpPlan:
    state_dir = Path(args.state_dir).resolve()
    for sub in ("redis", "storage", "logs"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    if not _port_free(args.host, args.port):
        raise UsageError(f"port {args.port} on {args.host} is in use: pass --port")
    api_key = _local_api_key(state_dir, args.api_key)
    redis_port = args.redis_port or _free_port()
    engine = args.engine or _default_engine()
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
    base_url = f"http://{args.host}:{args.port}"
    return _UpPlan(state_dir, api_key, redis_port, engine, base_url, env)


def cmd_up(args: argparse.Namespace) -> int:
    lazy("uvicorn", "service")
    plan = _plan(args)
    plan.info_file.unlink(missing_ok=True)
    stack = Supervisor(plan.state_dir / "logs", report=_report, exit_reasons=EXIT_REASONS)
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    # Ctrl-C stops the stack even when `up` was started with SIGINT ignored (a shell starts
    # background commands so, and Python then installs no KeyboardInterrupt handler).
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    code = EXIT_OK
    try:
        print(f"state     {plan.state_dir}", file=sys.stderr)
        _start_parts(stack, plan, args)
        info = {
            "base_url": plan.base_url,
            "api_key": plan.api_key,
            "state_dir": str(plan.state_dir),
            "model": args.model,
            "engine": plan.engine,
            "pid": os.getpid(),
        }
        _write_info(plan.info_file, info, stack)
        for child in stack.children:  # from now on a dead worker or API is restarted
            child.restart = child.name in ("api", "worker", "finalizer")
        _print_ready(plan)
        while True:
            if stack.check_alive():
                _write_info(plan.info_file, info, stack)
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        print("\nshutting down", file=sys.stderr)
    except CommandFailed as exc:
        err(str(exc))
        code = exc.code
    except (ProcessExited, OSError) as exc:  # a part that is not restarted, or cannot be
        err(str(exc))
        code = EXIT_FAILURE
    finally:
        # A second Ctrl-C during shutdown must not leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            stack.stop()
        finally:
            plan.info_file.unlink(missing_ok=True)
            for s, handler in previous.items():
                signal.signal(s, handler)
    print("stopped", file=sys.stderr)
    return code


def _start_parts(stack: Supervisor, plan: _UpPlan, args: argparse.Namespace) -> None:
    """Valkey, the API, a finalizer and (unless --no-worker) a worker, each waited for."""
    cli = [sys.executable, "-m", "contrail.client.cli"]
    env, port = plan.env, plan.redis_port
    try:
        valkey = valkey_server_path()
    except FileNotFoundError as exc:
        raise CommandFailed(f"`contrail up` needs the embedded Redis server: {exc}") from None
    stack.start(
        "valkey",
        [
            str(valkey),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(plan.state_dir / "redis"),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
        ],
        env,
        stop_timeout=10,
    )  # fmt: skip
    _wait_for("valkey", lambda: _redis_ping(port), stack, timeout=15)
    print(f"redis     redis://127.0.0.1:{port}/0 (AOF on)", file=sys.stderr)
    api = [*cli, "serve", "api", "--host", args.host, "--port", str(args.port)]
    stack.start("api", api, env, stop_timeout=15)
    _wait_for("the API", lambda: _http_ok(f"{plan.base_url}/readyz"), stack, timeout=60)
    print(f"api       {plan.base_url}  (docs {plan.base_url}/docs)", file=sys.stderr)
    # Jobs end through a finalizer (no engine: it starts in seconds), even with --no-worker,
    # so workers started elsewhere against this stack see their jobs complete.
    stack.start("finalizer", [*cli, "serve", "finalizer"], env, stop_timeout=40)
    print(f"finalizer log {plan.state_dir / 'logs' / 'finalizer.log'}", file=sys.stderr)
    if args.no_worker:
        return
    worker = [*cli, "serve", "worker", "--model", args.model, "--engine", plan.engine]
    stack.start("worker", worker, env, stop_timeout=40)
    print(
        f"worker    model {args.model}, engine {plan.engine}: loading "
        f"(log {plan.state_dir / 'logs' / 'worker.log'})",
        file=sys.stderr,
    )
    _wait_for(
        "the worker",
        _model_served(plan.base_url, plan.api_key, args.model),
        stack,
        timeout=args.worker_timeout,
        poll=0.5,
    )


def _print_ready(plan: _UpPlan) -> None:
    print("\ncontrail is up. In another shell:\n")
    print(f"  export {ENV_BASE_URL}={plan.base_url}")
    print(f"  export {ENV_API_KEY}={plan.api_key}")
    print("  contrail submit items.jsonl --task generic --wait\n")
    print(f"Viewer: {plan.base_url}/ui/ (sign in with the API key above)\n")
    print("Ctrl-C stops everything.", flush=True)


def _write_info(path: Path, info: dict[str, object], stack: Supervisor) -> None:
    """up.json: where the stack is, with its parts' current pids (updated on a restart)."""
    data = {**info, "pids": {c.name: c.popen.pid for c in stack.children}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


def register(registry: CommandRegistry) -> None:
    p = registry.add(
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
