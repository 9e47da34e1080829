"""Long chaos run on the real stack (Valkey with AOF, SeaweedFS, API, workers): 20 worker
kill -9s, Redis kill -9 and graceful restarts, a long Redis outage, an S3 outage of two minutes
and API kill -9s during job creation, while jobs run. Counts what was lost, duplicated and
decoded twice (all must be 0) and writes them to docs/bench/chaos.json. "Decoded twice" is read
two ways: the product's own counter, and from storage, every shard attempt's records file (one per
shard, plus one per attempt of a worker killed before it was counted).

``--engine vllm`` runs the workers on the vLLM pair engine that users run (the default is the
reference engine, which starts in seconds: a killed worker is back sooner, so more faults fit).

    .venv/bin/python bench/chaos.py [--engine vllm] [--worker-kills 20] [--s3-down 120]
        [--redis-down 90] [--out docs/bench/chaos_vllm.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchlib import OUT_DIR, REPO, git_sha, machine, versions, write_json

from contrail.testing.chaos import Chaos, ChaosPlan
from contrail.testing.servers import SeaweedS3, Valkey
from contrail.testing.stack import Stack


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--engine", choices=["reference", "vllm"], default="reference")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--items-per-job", type=int, default=400)
    ap.add_argument("--worker-kills", type=int, default=20)
    ap.add_argument("--redis-crashes", type=int, default=2)
    ap.add_argument("--redis-restarts", type=int, default=2)
    ap.add_argument("--redis-down", type=float, default=5.0, help="seconds per Redis restart")
    ap.add_argument("--long-redis-down", type=float, default=90.0, help="one long Redis outage")
    ap.add_argument("--s3-down", type=float, default=120.0)
    ap.add_argument("--api-kills", type=int, default=2)
    ap.add_argument("--interval", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--shuffle-long-faults",
        action="store_true",
        help="put the S3 and long Redis outages anywhere in the schedule (default: first, while "
        "every job still has work left)",
    )
    ap.add_argument("--out", type=Path, default=OUT_DIR / "chaos.json")
    args = ap.parse_args()

    from contrail.worker.models import tiny_model_path

    plan = ChaosPlan(
        workers=args.workers,
        jobs=args.jobs,
        items_per_job=args.items_per_job,
        worker_kills=args.worker_kills,
        redis_crashes=args.redis_crashes,
        redis_restarts=args.redis_restarts,
        redis_down_s=args.redis_down,
        s3_outages=1,
        s3_down_s=args.s3_down,
        api_kills=args.api_kills,
        interval_s=args.interval,
        long_faults_first=not args.shuffle_long_faults,
        seed=args.seed,
    )
    cache = tiny_model_path(REPO / ".contrail" / "models").parent
    with tempfile.TemporaryDirectory(prefix="contrail-chaos-") as tmp:
        root = Path(tmp)
        s3 = SeaweedS3(root / "s3").start()
        vk = Valkey(root / "valkey", aof=True).start()
        stack = Stack(
            root,
            s3,
            vk,
            cache,
            CONTRAIL_CLAIM_IDLE_MS="2000",
            CONTRAIL_HEARTBEAT_INTERVAL_S="0.3",
            CONTRAIL_RATE_LIMIT_PER_MINUTE="100000",
            CONTRAIL_ENGINE=args.engine,
            # the reference engine's wave size; vLLM schedules its own batches
            CONTRAIL_ENGINE_OPTIONS=json.dumps(
                {"max_batch": 64} if args.engine == "reference" else {}
            ),
        )
        try:
            stack.start_api()
            chaos = Chaos(stack, s3, plan)
            if args.long_redis_down > 0:
                long_down = args.long_redis_down

                def long_outage() -> None:
                    began = chaos.began()
                    stack.valkey.restart(down_s=long_down, crash=True)
                    chaos._note(f"redis kill -9, down {long_down}s ({began})")

                chaos.extra_faults.append(long_outage)
            started = time.time()
            report = chaos.run(timeout_s=1800)
        finally:
            stack.stop()
            vk.stop()
            s3.stop()
    payload = {
        "benchmark": "chaos",
        "engine": args.engine,
        "command": "python bench/chaos.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "git": git_sha(),
        "machine": machine(),
        "versions": versions(),
        "result": report.as_dict(),
    }
    write_json(args.out, payload)
    print(json.dumps({k: v for k, v in report.as_dict().items() if k != "faults"}, indent=2))
    ok = report.lost == 0 and report.duplicated == 0 and report.twice_decoded == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
