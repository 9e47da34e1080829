"""The suite stops only what it started: its servers die with the process that started them, and
.ci/run's cleanup stops the servers the suite recorded, never other processes on the machine
(another Redis-compatible server, someone's `contrail up`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from contrail.core.processes import start_time
from contrail.testing.servers import PIDDIR_ENV, Valkey, forget, free_port, spawn, valkey_binary

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "contrail.client.cli"]


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _gone_within(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _pong(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def test_servers_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    """A killed pytest (here: a script using contrail.testing.servers) leaves no server behind."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from contrail.testing.servers import Valkey\n"
        "v = Valkey(Path(sys.argv[1])).start()\n"
        "print(v.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "valkey")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    pid = int(owner.stdout.readline())
    try:
        assert _running(pid)
        owner.kill()
        owner.wait(10)
        assert _gone_within(pid, 10), "the server outlived the process that started it"
    finally:
        owner.kill()
        owner.wait(10)
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


def _contrail_up(state: Path) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    up = spawn(
        [*CLI, "up", "--no-worker", "--port", str(free_port()), "--state-dir", str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    info_file = state / "up.json"
    deadline = time.monotonic() + 120
    while not info_file.is_file():
        assert up.poll() is None, f"`contrail up` exited with {up.returncode}"
        assert time.monotonic() < deadline, "`contrail up` not ready in time"
        time.sleep(0.2)
    return up, json.loads(info_file.read_text())


@pytest.mark.slow
def test_ci_cleanup_stops_only_what_the_suite_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Started before the cleanup, not by the suite: a Redis-compatible server, a `contrail up`.
    other_port = free_port()
    other = spawn(
        [valkey_binary(), "--port", str(other_port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        piddir=None,
    )
    up, info = _contrail_up(tmp_path / "up")
    piddir = tmp_path / "pids"
    piddir.mkdir()
    ours = Valkey(tmp_path / "ours")
    try:
        # What the suite started and left running (a killed run): recorded in the pid folder.
        monkeypatch.setenv(PIDDIR_ENV, str(piddir))
        ours.start()
        monkeypatch.delenv(PIDDIR_ENV)
        assert ours.proc is not None and (piddir / str(ours.proc.pid)).is_file()
        # A stale record whose pid now names another process (same pid, other start time).
        (piddir / str(other.pid)).write_text(f"{other.pid} {int(start_time(other.pid) or 0) + 1}\n")

        cleanup = subprocess.run(
            ["bash", "-c", "source .ci/run && cleanup"],
            cwd=REPO,
            env={**os.environ, PIDDIR_ENV: str(piddir)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cleanup.returncode == 0, cleanup.stderr
        time.sleep(2)  # a signalled server takes a moment to shut down: give it that moment

        assert _running(other.pid) and _pong(other_port), "the cleanup stopped another Redis"
        pids = [up.pid, *info["pids"].values()]  # type: ignore[attr-defined]
        assert all(_running(p) for p in pids), "the cleanup stopped part of `contrail up`"
        assert httpx.get(f"{info['base_url']}/healthz", timeout=5).status_code == 200
        assert ours.proc.wait(15) is not None  # stopped: the suite recorded it
        assert not piddir.exists()
    finally:
        ours.stop()
        for proc in (up, other):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            forget(proc)
