"""Upload benchmark: validation rate, the API's memory and other tenants' latency during a
1M-line upload, and what an oversized unauthenticated request costs.

Starts a real Valkey and the real API (uvicorn, local-disk storage) and measures:
- validation: a 100k-line generic JSONL file uploaded through HTTP as a stream (median of
  `--reps`), and the same items as one JSON array, gzip-compressed JSON lines and Parquet;
- big_upload: the API process's RSS, sampled every 20 ms, while a 1M-line file goes up, and the
  latency of other requests (GET /v1/models, every 20 ms from another client) meanwhile;
- oversized: an unauthenticated POST /v1/jobs declaring 300 MB (and one sending 300 MB chunked,
  without Content-Length): seconds until the answer and the API's RSS growth.
Writes docs/bench/upload.json.

    python bench/upload.py [--lines 100000] [--big-lines 1000000] [--reps 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provenance import git_sha  # noqa: E402

from contrail.testing.servers import ApiServer, valkey  # noqa: E402

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


def write_variants(jsonl: Path) -> dict[str, Path]:
    """The same items as a JSON array, gzip-compressed JSON lines and Parquet."""
    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    array = jsonl.with_suffix(".json")
    array.write_text(json.dumps(rows), encoding="utf-8")
    gz = jsonl.with_name(jsonl.name + ".gz")
    gz.write_bytes(gzip.compress(jsonl.read_bytes(), compresslevel=6))
    parquet = jsonl.with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    return {"json_array": array, "jsonl_gzip": gz, "parquet": parquet}


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


def write_result(path: Path, result: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def machine(load_before: tuple[float, float, float]) -> dict[str, object]:
    """The machine a service benchmark ran on, and its load average before and after."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


class LatencyProbe(threading.Thread):
    """Another tenant's requests (GET /v1/models) every `interval` s, timed, until stopped."""

    def __init__(self, url: str, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.seconds: list[float] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
            while not self._stop_event.is_set():
                t0 = time.perf_counter()
                c.get(f"{self.url}/v1/models").raise_for_status()
                self.seconds.append(time.perf_counter() - t0)
                time.sleep(self.interval)

    def stop(self) -> dict[str, float | int]:
        self._stop_event.set()
        self.join()
        ms = sorted(s * 1000 for s in self.seconds)
        if not ms:
            return {"requests": 0}
        return {
            "requests": len(ms),
            "p50_ms": round(ms[len(ms) // 2], 1),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
            "max_ms": round(ms[-1], 1),
        }


def oversized(url: str, pid: int, chunked: bool, total: int = 300 << 20) -> dict[str, object]:
    """An unauthenticated POST /v1/jobs of `total` bytes: the answer's status and delay, and
    the API's peak RSS growth meanwhile. Sends until the server answers or closes."""
    sampler = RssSampler(pid)
    before = sampler.rss()
    sampler.start()
    host, port = url.removeprefix("http://").split(":")
    head = f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n"
    block = b"{" + b" " * ((1 << 20) - 1)
    sent = 0
    reply = bytearray()
    answered = threading.Event()
    answered_at: list[float] = []

    def read(sock: socket.socket) -> None:
        while b"\r\n\r\n" not in reply:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            if not answered_at:
                answered_at.append(time.perf_counter())
            reply.extend(data)
        answered.set()

    start = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        reader = threading.Thread(target=read, args=(sock,), daemon=True)
        reader.start()
        sock.sendall(head.encode() + b"\r\n")
        while sent < total and not answered.is_set():
            data = (b"%x\r\n" % len(block) + block + b"\r\n") if chunked else block
            try:
                sock.sendall(data)
            except OSError:  # the server answered and closed
                break
            sent += len(block)
        answered.wait(60)
    status = int(bytes(reply).split(b" ", 2)[1]) if reply else 0
    seconds = (answered_at[0] if answered_at else time.perf_counter()) - start
    peak = sampler.stop()
    return {
        "declared_bytes": None if chunked else total,
        "status": status,
        "seconds_to_answer": round(seconds, 3),
        "body_bytes_sent_before_answer": sent,
        "api_rss_growth_mb": round((peak - before) / 2**20, 1),
    }


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
            containers: dict[str, object] = {}
            for name, path in write_variants(small).items():
                seconds, info = upload(api.url, path)
                assert info["lines"] == args.lines, info
                containers[name] = {
                    "bytes": path.stat().st_size,
                    "items_per_s": round(args.lines / seconds, 1),
                }
            assert api.proc is not None
            sampler = RssSampler(api.proc.pid)
            baseline = sampler.rss()
            probe = LatencyProbe(api.url)
            sampler.start()
            probe.start()
            big_seconds, big_info = upload(api.url, big)
            latency = probe.stop()
            peak = sampler.stop()
            assert big_info["lines"] == args.big_lines, big_info
            limits = {
                "declared_300mb": oversized(api.url, api.proc.pid, chunked=False),
                "chunked_300mb": oversized(api.url, api.proc.pid, chunked=True),
            }
        finally:
            api.stop()

    result = {
        "benchmark": "upload",
        "versions": {"contrail": git_sha()},
        "machine": machine(load_before),
        "validation": {
            "lines": args.lines,
            "bytes": small_bytes,
            "items_per_s": [round(r, 1) for r in rates],
            "median_items_per_s": round(statistics.median(rates), 1),
            "containers": containers,
        },
        "big_upload": {
            "lines": args.big_lines,
            "bytes": big_bytes,
            "seconds": round(big_seconds, 2),
            "items_per_s": round(args.big_lines / big_seconds, 1),
            "api_rss_before_mb": round(baseline / 2**20, 1),
            "api_rss_peak_mb": round(peak / 2**20, 1),
            "api_rss_growth_mb": round((peak - baseline) / 2**20, 1),
            "other_requests_meanwhile": latency,
        },
        "oversized_unauthenticated": limits,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
