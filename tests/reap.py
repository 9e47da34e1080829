"""Stop the servers a test run recorded, and nothing else.

    python3 tests/reap.py PIDDIR

contrail.testing's servers write one file per server they start into $CONTRAIL_TEST_PIDDIR,
holding "<pid> <start time>", and remove it when they stop the server. Left-over files belong to
a run that was killed. For each, the process is signalled only if that pid still has that start
time (a pid reused by another process is left alone): SIGTERM to its process group (each server
leads its own), then SIGKILL to whatever is left after a grace period. Nothing is matched by name,
so other people's Redis servers or `contrail up` stacks on the same machine are never touched.

It runs from .ci/run's exit trap with the system Python, also when the virtualenv is broken:
contrail.core.processes is standard library only, and is imported from the checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "core"))

from contrail.core.processes import reap, recorded, start_time

__all__ = ["reap", "recorded", "start_time"]

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    reap(Path(sys.argv[1]))
