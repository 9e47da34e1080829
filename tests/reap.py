"""Stop the servers a test run recorded, and nothing else.

    python3 tests/reap.py PIDDIR

tests/servers.py writes one file per server it starts into $CONTRAIL_TEST_PIDDIR, holding
"<pid> <start time>", and removes it when it stops the server. Left-over files belong to a run
that was killed. For each, the process is signalled only if that pid still has that start time
(a pid reused by another process is left alone): SIGTERM to its process group (each server leads
its own), then SIGKILL to whatever is left after a grace period. Nothing is matched by name, so
other people's Redis servers or `contrail up` stacks on the same machine are never touched.

Standard library only: it runs from .ci/run's exit trap, also when the virtualenv is broken.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

GRACE_S = 10.0


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (after the command name, which may hold spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


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


def _signal_group(pid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        print(f"reap: not allowed to signal process group {pid}", file=sys.stderr)
        return False
    return True


def reap(piddir: Path, grace_s: float = GRACE_S) -> list[int]:
    """Stop every recorded server still running; returns their pids."""
    if not piddir.is_dir():
        return []
    pids = recorded(piddir)
    for pid in pids:
        print(f"reap: stopping left-over test server {pid}", file=sys.stderr)
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(start_time(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)
    return pids


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    reap(Path(sys.argv[1]))
