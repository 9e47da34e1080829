"""Upload benchmark: validation rate of a 100k-line file and the API's memory on a 1M-line upload.

Starts a real Valkey and the real API (uvicorn, local-disk storage), uploads generated generic
JSONL through HTTP as a stream, and samples the API process's RSS every 20 ms while the 1M-line
file goes up. Writes docs/bench/upload.json.

    python bench/upload.py [--lines 100000] [--big-lines 1000000] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provenance import git_sha  # noqa: E402

from tests.servers import ApiServer, valkey  # noqa: E402

KEY = "bench-key-0123456789"


def write_items(path: Path, lines: int) -> int:
    """Generic multiple-choice items, ~150 bytes a line (like real CSQA items)."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(lines):
            item = {
                "id": f"item-{i}",
                "question": f"Where would you most likely find object number {i} in a house?",
                "answer": "kitchen",
                "choices": ["kitchen", "garage", "attic", "garden", "bedroom"],
            }
            out.write(json.dumps(item) + "\n")
    return path.stat().st_size


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


def upload(url: str, path: Path) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    response = httpx.post(
        f"{url}/v1/files",
        params={"task": "generic", "filename": path.name},
        content=_chunks(path),
        headers={
            "Authorization": f"Bearer {KEY}",
            "Content-Type": "application/jsonl",
            "Content-Length": str(path.stat().st_size),
        },
        timeout=3600,
    )
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed, response.json()


class RssSampler(threading.Thread):
    """Peak resident memory of one process (and its children), sampled until stopped."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop_event = threading.Event()

    def rss(self) -> int:
        procs = [self.process, *self.process.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs if p.is_running())

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--big-lines", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "upload.json")
    args = ap.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="contrail-upload-") as tmp_name, valkey() as redis:
        tmp = Path(tmp_name)
        env = {
            **os.environ,
            "CONTRAIL_REDIS_URL": redis.url,
            "CONTRAIL_STORAGE_URL": f"file://{tmp / 'storage'}",
            "CONTRAIL_API_KEYS": f"bench:{KEY}",
            "CONTRAIL_MAX_QUEUED_ITEMS": str(10 * args.big_lines),
            "CONTRAIL_RATE_LIMIT_PER_MINUTE": "100000",
        }
        api = ApiServer(env, tmp).start()
        try:
            small, big = tmp / "small.jsonl", tmp / "big.jsonl"
            small_bytes = write_items(small, args.lines)
            big_bytes = write_items(big, args.big_lines)
            rates = []
            for _ in range(args.reps):
                seconds, info = upload(api.url, small)
                assert info["lines"] == args.lines, info
                rates.append(args.lines / seconds)
            assert api.proc is not None
            sampler = RssSampler(api.proc.pid)
            baseline = sampler.rss()
            sampler.start()
            big_seconds, big_info = upload(api.url, big)
            peak = sampler.stop()
            assert big_info["lines"] == args.big_lines, big_info
        finally:
            api.stop()

    result = {
        "benchmark": "upload",
        "versions": {"contrail": git_sha()},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "validation": {
            "lines": args.lines,
            "bytes": small_bytes,
            "items_per_s": [round(r, 1) for r in rates],
            "median_items_per_s": round(statistics.median(rates), 1),
        },
        "big_upload": {
            "lines": args.big_lines,
            "bytes": big_bytes,
            "seconds": round(big_seconds, 2),
            "items_per_s": round(args.big_lines / big_seconds, 1),
            "api_rss_before_mb": round(baseline / 2**20, 1),
            "api_rss_peak_mb": round(peak / 2**20, 1),
            "api_rss_growth_mb": round((peak - baseline) / 2**20, 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
