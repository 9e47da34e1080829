"""Load test of the local stack on loopback: many concurrent clients plus one huge upload.

Starts `contrail up` (embedded Valkey, local-disk storage, the API and one reference-engine worker
with the tiny model) with several tenants in a keys file, completes one small job per tenant,
then runs CLIENTS concurrent clients for DURATION seconds, each looping over: list its tenant's
jobs, poll its job, fetch the job's results, upload a small file (weights 3:4:2:1, a random
think time of 0.1-0.5 s between requests). A third of the way in, one more client uploads a
BIG_LINES-line file. Writes docs/bench/load.json: per route the count, p50/p99/max latency
(overall, and split by whether the big upload was running) and the status codes, the count of
5xx answers (target 0), the big upload's time and answer, and the API's peak memory.

    python bench/load.py [--clients 200] [--duration 60] [--big-lines 1000000] [--tenants 10]

Everything (the load generator included) shares this machine's CPUs, so the figures are a
floor for a dedicated host, not a capacity plan.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provenance import git_sha  # noqa: E402

from contrail.testing.servers import free_port, spawn, stop_process  # noqa: E402

WEIGHTS = {"list": 3, "poll": 4, "results": 2, "upload": 1}
ROUTES = {
    "list": "GET /v1/jobs",
    "poll": "GET /v1/jobs/{id}",
    "results": "GET /v1/jobs/{id}/results",
    "upload": "POST /v1/files (20 lines)",
}
BIG_ROUTE = "POST /v1/files (big)"


@dataclass
class Hit:
    route: str
    start: float  # seconds since the load began
    seconds: float
    status: int  # 0: no answer (timeout, connection error)


def item_line(i: int) -> str:
    return json.dumps(
        {
            "id": f"item-{i}",
            "question": f"Where would you most likely find object number {i} in a house?",
            "answer": "kitchen",
            "choices": ["kitchen", "garage", "attic", "garden", "bedroom"],
        }
    )


def write_items(path: Path, lines: int) -> int:
    with path.open("w", encoding="utf-8") as out:
        for i in range(lines):
            out.write(item_line(i) + "\n")
    return path.stat().st_size


SMALL_UPLOAD_LINES = 20


def small_file(n: int = SMALL_UPLOAD_LINES) -> bytes:
    return ("\n".join(item_line(i) for i in range(n)) + "\n").encode()


# ------------------------------------------------------------------------------ the stack


def start_stack(
    tmp: Path, tenants: list[tuple[str, str]], cache: Path
) -> tuple[Any, dict[str, Any]]:
    keys_file = tmp / "keys.txt"
    keys_file.write_text("".join(f"{t}:{k}\n" for t, k in tenants))
    state = tmp / "state"
    env = {
        **os.environ,
        "CONTRAIL_API_KEYS_FILE": str(keys_file),
        # The clients share one address: neither the per-tenant POST limit nor the quotas are
        # under test here, the latency of the routes is.
        "CONTRAIL_RATE_LIMIT_PER_MINUTE": "10000000",
        "CONTRAIL_MAX_QUEUED_ITEMS": "5000000",
        "CONTRAIL_SHARD_SIZE": "64",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [
        sys.executable, "-m", "contrail.client.cli", "up", "--engine", "reference",
        "--model", "tiny", "--cache-dir", str(cache), "--state-dir", str(state),
        "--port", str(free_port()),
    ]  # fmt: skip
    log = (tmp / "up.log").open("wb")
    up = spawn(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not (state / "up.json").is_file():
        if up.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"contrail up failed; see {tmp / 'up.log'} and {state / 'logs'}")
        time.sleep(0.5)
    return up, json.loads((state / "up.json").read_text())


def completed_job(base: str, key: str) -> str:
    """One small job of the tenant, decoded to the end (its results are what clients fetch)."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as c:
        up = c.post("/v1/files", params={"task": "generic"}, content=small_file(8))
        up.raise_for_status()
        body = {"input_file_id": up.json()["id"], "model": "tiny",
                "decoding": {"max_new_tokens": 8, "counterfactual_fraction": 0.5}}  # fmt: skip
        job = c.post("/v1/jobs", json=body)
        job.raise_for_status()
        job_id: str = job.json()["id"]
        deadline = time.monotonic() + 600
        while c.get(f"/v1/jobs/{job_id}").json()["status"] != "completed":
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job_id} did not complete")
            time.sleep(0.5)
    return job_id


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[int] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(self.process.memory_info().rss)
            time.sleep(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop_event.set()
        self.join()
        return {
            "start_mb": round(self.samples[0] / 2**20, 1),
            "peak_mb": round(max(self.samples) / 2**20, 1),
            "end_mb": round(self.samples[-1] / 2**20, 1),
        }


# ------------------------------------------------------------------------------ the load


async def client_loop(
    base: str, key: str, job_id: str, t0: float, stop_at: float, hits: list[Hit], seed: int
) -> None:
    rng = random.Random(seed)
    ops, weights = list(WEIGHTS), list(WEIGHTS.values())
    body = small_file()
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as c:
        await asyncio.sleep(rng.uniform(0, 1))  # spread the first requests
        while time.monotonic() < stop_at:
            op = rng.choices(ops, weights)[0]
            start = time.monotonic()
            status = 0
            try:
                if op == "list":
                    status = (await c.get("/v1/jobs", params={"limit": 20})).status_code
                elif op == "poll":
                    status = (await c.get(f"/v1/jobs/{job_id}")).status_code
                elif op == "results":
                    async with c.stream("GET", f"/v1/jobs/{job_id}/results") as r:
                        async for _ in r.aiter_bytes():
                            pass
                        status = r.status_code
                else:
                    r = await c.post(
                        "/v1/files",
                        params={"task": "generic"},
                        content=body,
                        headers={"Content-Type": "application/jsonl"},
                    )
                    status = r.status_code
            except httpx.HTTPError:
                status = 0
            hits.append(Hit(ROUTES[op], start - t0, time.monotonic() - start, status))
            await asyncio.sleep(rng.uniform(0.1, 0.5))


async def _chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


async def big_upload(
    base: str, key: str, path: Path, t0: float, delay: float, hits: list[Hit]
) -> dict[str, Any]:
    await asyncio.sleep(delay)
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/jsonl",
        "Content-Length": str(path.stat().st_size),
    }
    start = time.monotonic()
    answer: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=3600) as c:
        try:
            r = await c.post("/v1/files", params={"task": "generic"}, content=_chunks(path))
            status = r.status_code
            answer = (
                r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            )
        except httpx.HTTPError as exc:
            status, answer = 0, {"error": repr(exc)}
    seconds = time.monotonic() - start
    hits.append(Hit(BIG_ROUTE, start - t0, seconds, status))
    return {
        "window": (start - t0, start - t0 + seconds),
        "started_s": round(start - t0, 2),
        "seconds": round(seconds, 2),
        "status": status,
        "lines": answer.get("lines"),
        "error": answer.get("error"),
    }


async def run_load(
    base: str, tenants: list[tuple[str, str]], jobs: dict[str, str], args: argparse.Namespace,
    big: Path,
) -> tuple[list[Hit], dict[str, Any]]:  # fmt: skip
    hits: list[Hit] = []
    t0 = time.monotonic()
    stop_at = t0 + args.duration
    loops = [
        client_loop(base, key, jobs[tenant], t0, stop_at, hits, seed=i)
        for i, (tenant, key) in ((i, tenants[i % len(tenants)]) for i in range(args.clients))
    ]
    upload = big_upload(base, tenants[0][1], big, t0, args.duration / 3, hits)
    *_, big_result = await asyncio.gather(*loops, upload)
    return hits, big_result


# ------------------------------------------------------------------------------ figures


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(hits: list[Hit]) -> dict[str, Any]:
    if not hits:
        return {"count": 0}
    ms = [h.seconds * 1000 for h in hits]
    return {
        "count": len(hits),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        "max_ms": round(max(ms), 1),
        "statuses": dict(sorted(Counter(str(h.status) for h in hits).items())),
    }


def figures(hits: list[Hit], big: dict[str, Any]) -> dict[str, Any]:
    window = big.pop("window")
    by_route: dict[str, list[Hit]] = defaultdict(list)
    for h in hits:
        by_route[h.route].append(h)
    routes: dict[str, Any] = {}
    for route, route_hits in sorted(by_route.items()):
        if route == BIG_ROUTE:
            routes[route] = summarize(route_hits)
            continue
        during = [h for h in route_hits if window[0] <= h.start <= window[1]]
        outside = [h for h in route_hits if not window[0] <= h.start <= window[1]]
        routes[route] = {
            **summarize(route_hits),
            "during_big_upload": summarize(during),
            "outside_big_upload": summarize(outside),
        }
    return {
        "routes": routes,
        "requests": len(hits),
        "server_errors_5xx": sum(1 for h in hits if h.status >= 500),
        "no_answer": sum(1 for h in hits if h.status == 0),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--big-lines", type=int, default=1_000_000)
    ap.add_argument("--tenants", type=int, default=10)
    ap.add_argument("--cache-dir", type=Path, default=REPO / ".contrail" / "models")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "load.json")
    args = ap.parse_args()
    tenants = [
        (f"tenant{i:02d}", f"sk-load-{i:02d}-{os.urandom(8).hex()}") for i in range(args.tenants)
    ]

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="contrail-load-") as tmp_name:
        tmp = Path(tmp_name)
        big = tmp / "big.jsonl"
        big_bytes = write_items(big, args.big_lines)
        up, info = start_stack(tmp, tenants, args.cache_dir)
        try:
            base = str(info["base_url"])
            jobs = {tenant: completed_job(base, key) for tenant, key in tenants}
            sampler = RssSampler(int(info["pids"]["api"]))
            sampler.start()
            cpu_before = resource.getrusage(resource.RUSAGE_SELF)
            wall = time.monotonic()
            hits, big_result = asyncio.run(run_load(base, tenants, jobs, args, big))
            wall = time.monotonic() - wall
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            rss = sampler.stop()
            api_log = (tmp / "state" / "logs" / "api.log").read_text(errors="replace")
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            finally:
                stop_process(up)

    result = {
        "benchmark": "load",
        "versions": {"contrail": git_sha()},
        "setup": {
            "stack": "contrail up: embedded Valkey (AOF), local-disk storage, API, one "
            "reference-engine worker (tiny model), all on loopback",
            "clients": args.clients,
            "tenants": args.tenants,
            "duration_s": args.duration,
            "mix": {ROUTES[k]: w for k, w in WEIGHTS.items()},
            "think_time_s": [0.1, 0.5],
            "small_upload_lines": SMALL_UPLOAD_LINES,
            "big_upload_lines": args.big_lines,
            "big_upload_bytes": big_bytes,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "shared": "the machine was shared with other engineers' work during the run",
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "load_generator_cpu_s": round(
                cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime,
                1,
            ),
            "wall_s": round(wall, 1),
        },
        **figures(hits, big_result),
        "big_upload": big_result,
        "api_rss": rss,
    }
    if result["server_errors_5xx"]:
        # what the API logged about them (the state folder is gone after the run)
        result["api_log_warnings"] = [
            line for line in api_log.splitlines() if "unavailable" in line or "rror" in line
        ][:20]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["server_errors_5xx"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
