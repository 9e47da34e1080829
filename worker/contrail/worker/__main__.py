"""Run a worker: ``python -m contrail.worker [--finalizer] [--burst] [--check] [--model M]
[--engine E]``.

Settings come from CONTRAIL_* variables (`contrail.worker.settings.WorkerSettings`); the
flags override the model and the engine. ``--finalizer`` runs a finalizer (no engine: it merges
finished jobs' datasets) instead of a decode worker. ``--burst`` drains the queue and exits;
``--check`` is a container healthcheck (see `contrail.worker.consumer.health`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from contrail.worker.settings import get_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contrail.worker", description=__doc__)
    parser.add_argument("--finalizer", action="store_true", help="run a finalizer")
    parser.add_argument("--burst", action="store_true", help="drain the queue, then exit")
    parser.add_argument("--check", action="store_true", help="healthcheck exit code")
    parser.add_argument("--model", help="override CONTRAIL_MODEL")
    parser.add_argument(
        "--engine", choices=["vllm", "reference", "simulated"], help="override CONTRAIL_ENGINE"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("CONTRAIL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = get_settings()
    updates: dict[str, Any] = {
        k: v for k, v in (("model", args.model), ("engine", args.engine)) if v
    }
    if updates:
        settings = settings.model_copy(update=updates)
    if args.check:
        from contrail.worker.consumer.health import check

        return check(settings, finalizer=args.finalizer)
    from contrail.worker.consumer.loop import Worker

    worker = Worker(settings, burst=args.burst, role="finalizer" if args.finalizer else "decode")
    signal.signal(signal.SIGTERM, worker.handle_signal)
    signal.signal(signal.SIGINT, worker.handle_signal)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
