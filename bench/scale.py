"""Fleet-scale simulation: the control plane (API, Redis, S3, finalizers) under many workers.

Real processes throughout: Valkey, SeaweedFS S3, the API under uvicorn, finalizers and N decode
workers (`python -m contrail.worker`). Only the GPU is simulated: the workers serve the
`simulated` engine (contrail.worker.engine.simulated), which sleeps as long as its GPU profile
says a wave takes and uses no CPU meanwhile. Everything a worker does besides that sleep is the
coordination being measured.

Phases:
1. a sweep: fleets of --workers sizes, each given --items-per-worker items per worker, split
   into one job per tenant (three tenants);
2. a big job: --big-items items in one job (tenant alpha), with small jobs of the other tenants
   beside it, on the largest fleet.

Measured per phase, from outside the product where possible:
- the decode window: jobs created -> the last job's last shard counted (its status leaves
  in_progress), polled every 0.2 s;
- engine seconds (the manifests' sum of time inside the engine) and the fleet's share of its
  worker-seconds spent there; overhead = worker-seconds outside the engine / engine seconds;
- CPU seconds of every process (workers, finalizers, API, Valkey, SeaweedFS) from /proc, per
  1,000 rationales, and the host's CPU use: a worker on its own host would add its CPU seconds
  to its GPU's time (the loop does not overlap them), so worker CPU / engine seconds is the
  overhead a fleet of dedicated hosts would see;
- Redis commands (INFO) and memory per 1M items;
- last shard -> completed, the finalizer's merge seconds (from its log) and peak RSS (VmHWM);
- the API's latency (p50, p99) on status, list and models requests made throughout.

    .venv/bin/python bench/scale.py [--workers 1,4,8,16,32] [--items-per-worker 2048]
        [--big-items 1000000] [--finalizers 2] [--out docs/bench/scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provenance import git_sha  # noqa: E402

from contrail.testing.servers import ApiServer, Valkey, WorkerProc, seaweed  # noqa: E402

MODEL = "sim-8b"
TENANTS = {
    "alpha": "sk-scale-alpha-key",
    "beta": "sk-scale-beta-key",
    "gamma": "sk-scale-gamma-key",
}
DECODING = {"max_new_tokens": 64}
CLK_TCK = os.sysconf("SC_CLK_TCK")
TERMINAL = ("completed", "failed", "cancelled", "expired")


# ----------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def host_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole host."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclass
class Fleet:
    """The deployment: API, finalizers and decode workers, all sharing one environment."""

    env: dict[str, str]
    tmp: Path
    valkey: Valkey
    weed_pid: int
    api: ApiServer | None = None
    workers: list[WorkerProc] = field(default_factory=list)
    finalizers: list[WorkerProc] = field(default_factory=list)

    def start(self, finalizers: int) -> None:
        self.api = ApiServer(self.env, self.tmp).start()
        for _ in range(finalizers):
            args = ["--finalizer"]
            self.finalizers.append(
                WorkerProc(self.env, self.tmp, args=args, name="finalizer").start()
            )

    def grow(self, n: int) -> None:
        while len(self.workers) < n:
            self.workers.append(WorkerProc(self.env, self.tmp).start())
        deadline = time.monotonic() + 300
        while self.served() < n:
            dead = [w for w in self.workers if w.proc is not None and w.proc.poll() is not None]
            if dead:
                raise SystemExit(f"a worker exited:\n{dead[0].log()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"only {self.served()} of {n} workers announced themselves")
            time.sleep(0.5)

    def served(self) -> int:
        r = self.get("/v1/models", TENANTS["alpha"])
        return sum(m["workers"] for m in r.json()["data"] if m["id"] == MODEL)

    @property
    def url(self) -> str:
        assert self.api is not None
        return self.api.url

    def get(self, path: str, key: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {key}"}, **kw)

    def pids(self) -> dict[str, list[int]]:
        assert self.api is not None and self.api.proc is not None
        assert self.valkey.proc is not None
        return {
            "workers": [w.pid for w in self.workers],
            "finalizers": [f.pid for f in self.finalizers],
            "api": [self.api.proc.pid],
            "valkey": [self.valkey.proc.pid],
            "seaweedfs": [self.weed_pid],
        }

    def cpu(self) -> dict[str, float]:
        return {role: sum(cpu_seconds(p) for p in pids) for role, pids in self.pids().items()}

    def stop(self) -> None:
        for w in [*self.workers, *self.finalizers]:
            w.stop(timeout=30)
        if self.api is not None:
            self.api.stop()


# ----------------------------------------------------------------------------- the API probe


class ApiProbe(threading.Thread):
    """Status, list and models requests, back to back, timing each one."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(daemon=True, name="api-probe")
        self.fleet = fleet
        self.jobs: list[tuple[str, str]] = []  # (job id, tenant key)
        self.latencies: list[float] = []
        self.errors = 0
        self.redis_peak = 0
        self.running = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        r = redis.Redis.from_url(self.fleet.valkey.url)
        with httpx.Client(base_url=self.fleet.url, timeout=30) as c:
            k = 0
            while not self.done.is_set():
                if not self.running.wait(0.5):
                    continue
                k += 1
                if k % 3 == 0 and self.jobs:
                    job_id, key = self.jobs[k % len(self.jobs)]
                    path = f"/v1/jobs/{job_id}"
                else:
                    key, path = (
                        TENANTS["beta"],
                        ("/v1/jobs?limit=20" if k % 3 == 1 else "/v1/models"),
                    )
                t = time.perf_counter()
                try:
                    ok = c.get(path, headers={"Authorization": f"Bearer {key}"}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - t)
                self.errors += not ok
                if k % 20 == 0:
                    mem = r.info("memory")["used_memory"]
                    self.redis_peak = max(self.redis_peak, int(mem))
                time.sleep(0.05)

    def phase(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [lat[0]] * 99 if lat else []
        out = {
            "requests": len(lat),
            "errors": self.errors,
            "p50_ms": round(q[49] * 1000, 2) if q else None,
            "p99_ms": round(q[98] * 1000, 2) if q else None,
            "max_ms": round(lat[-1] * 1000, 2) if lat else None,
        }
        self.latencies, self.errors = [], 0
        return out


# ----------------------------------------------------------------------------- jobs


def items(n: int, prefix: str) -> bytes:
    """Yes/no questions, one rationale in four given (as in a real upload)."""
    lines = []
    for i in range(n):
        even = i % 2 == 0
        item: dict[str, Any] = {
            "id": f"{prefix}{i:07d}",
            "question": f"Is {i} an even number, counting from zero?",
            "answer": "yes" if even else "no",
            "choices": ["yes", "no"],
        }
        if i % 4 == 0:
            item["rationale"] = f"{i} {'is' if even else 'is not'} divisible by two."
        lines.append(json.dumps(item))
    return ("\n".join(lines) + "\n").encode()


def upload(fleet: Fleet, key: str, n: int, prefix: str) -> str:
    with httpx.Client(base_url=fleet.url, timeout=1800) as c:
        r = c.post(
            "/v1/files",
            params={"task": "generic", "filename": f"{prefix}.jsonl"},
            content=items(n, prefix),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/jsonl"},
        )
    if r.status_code != 201:
        raise SystemExit(f"upload of {n} items: {r.status_code} {r.text[:500]}")
    return str(r.json()["id"])


def create(fleet: Fleet, key: str, file_id: str) -> str:
    body = {"input_file_id": file_id, "model": MODEL, "decoding": DECODING}
    r = httpx.post(
        fleet.url + "/v1/jobs",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    if r.status_code != 201:
        raise SystemExit(f"job creation: {r.status_code} {r.text[:500]}")
    return str(r.json()["id"])


@dataclass
class Tracked:
    job_id: str
    key: str
    items: int
    counted_at: float | None = None  # first seen past in_progress (every shard counted)
    ended_at: float | None = None
    status: str = "queued"


def follow(fleet: Fleet, jobs: list[Tracked], t0: float, timeout: float) -> None:
    with httpx.Client(base_url=fleet.url, timeout=60) as c:
        while any(j.ended_at is None for j in jobs):
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"jobs not done after {timeout} s: {[j.status for j in jobs]}")
            for j in (j for j in jobs if j.ended_at is None):
                status = c.get(f"/v1/jobs/{j.job_id}", headers={"Authorization": f"Bearer {j.key}"})
                j.status = status.json()["status"]
                now = time.monotonic()
                if j.status not in ("queued", "in_progress") and j.counted_at is None:
                    j.counted_at = now
                if j.status in TERMINAL:
                    j.ended_at = now
            time.sleep(0.2)


MERGED = re.compile(
    r"job (\S+) completed: (\d+) records, (\d+) errors \(\w+\), merged in ([\d.]+) s"
)


def merge_seconds(fleet: Fleet) -> dict[str, float]:
    out: dict[str, float] = {}
    for f in fleet.finalizers:
        for m in MERGED.finditer(f.log()):
            out[m.group(1)] = float(m.group(4))
    return out


def manifest(fleet: Fleet, storage: Any, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(storage.get(f"jobs/{job_id}/manifest.json"))
    return data


def run_phase(
    fleet: Fleet,
    probe: ApiProbe,
    storage: Any,
    name: str,
    sizes: list[tuple[str, int]],
    timeout: float,
) -> dict[str, Any]:
    """Upload one file per (tenant, size), create the jobs at once, follow them to the end."""
    n_workers = len(fleet.workers)
    t = time.perf_counter()
    files = [
        (tenant, n, upload(fleet, TENANTS[tenant], n, f"{name}-{tenant}-")) for tenant, n in sizes
    ]
    upload_s = time.perf_counter() - t
    rc = redis.Redis.from_url(fleet.valkey.url)
    commands0 = int(rc.info("stats")["total_commands_processed"])
    mem0 = int(rc.info("memory")["used_memory"])
    cpu0, host0 = fleet.cpu(), host_cpu()
    probe.phase()  # drop what came before
    probe.redis_peak = mem0
    probe.running.set()
    t0 = time.monotonic()
    jobs = [
        Tracked(create(fleet, TENANTS[tenant], fid), TENANTS[tenant], n) for tenant, n, fid in files
    ]
    probe.jobs = [(j.job_id, j.key) for j in jobs]
    follow(fleet, jobs, t0, timeout)
    probe.running.clear()
    cpu1, host1 = fleet.cpu(), host_cpu()
    commands = int(rc.info("stats")["total_commands_processed"]) - commands0
    mem_end = int(rc.info("memory")["used_memory"])
    api = probe.phase()
    merged = merge_seconds(fleet)
    manifests = [manifest(fleet, storage, j.job_id) for j in jobs]

    n_items = sum(j.items for j in jobs)
    rationales = sum(m["request_counts"]["completed"] for m in manifests)
    engine_s = sum(m["engine_seconds"] for m in manifests)
    window = max(j.counted_at or 0 for j in jobs) - t0
    cpu = {role: round(cpu1[role] - cpu0[role], 2) for role in cpu0}
    busy = host1[0] - host0[0]
    total = host1[1] - host0[1]
    return {
        "phase": name,
        "workers": n_workers,
        "finalizers": len(fleet.finalizers),
        "jobs": [
            {
                "tenant": tenant,
                "items": j.items,
                "status": j.status,
                "rationales": m["request_counts"]["completed"],
                "failed": m["request_counts"]["failed"],
                "engine_seconds": round(m["engine_seconds"], 3),
                "created_to_counted_s": round((j.counted_at or t0) - t0, 2),
                "last_shard_to_completed_s": round((j.ended_at or 0) - (j.counted_at or 0), 2),
                "merge_seconds": merged.get(j.job_id),
            }
            for (tenant, _, _), j, m in zip(files, jobs, manifests, strict=True)
        ],
        "items": n_items,
        "rationales": rationales,
        "upload_seconds": round(upload_s, 2),
        "decode_window_s": round(window, 2),
        "engine_seconds": round(engine_s, 2),
        "engine_share_of_worker_time": round(engine_s / (n_workers * window), 4),
        "overhead_vs_engine_wall": round((n_workers * window - engine_s) / engine_s, 4),
        "overhead_vs_engine_worker_cpu": round(cpu["workers"] / engine_s, 4),
        "rationales_per_s": round(rationales / window, 2),
        "ideal_rationales_per_s": round(rationales / (engine_s / n_workers), 2),
        "cpu_seconds": cpu,
        "cpu_ms_per_rationale": {k: round(1000 * v / rationales, 4) for k, v in cpu.items()},
        "host_cpu_busy": round(busy / total, 3) if total else None,
        "redis_commands": commands,
        "redis_commands_per_1m_items": round(commands * 1e6 / n_items),
        "redis_used_memory_mb": {
            "start": round(mem0 / 2**20, 2),
            "peak_sampled": round(probe.redis_peak / 2**20, 2),
            "end": round(mem_end / 2**20, 2),
        },
        "finalizer_peak_rss_mb": [peak_rss_mb(p) for p in fleet.pids()["finalizers"]],
        "worker_peak_rss_mb_max": max((peak_rss_mb(p) or 0.0) for p in fleet.pids()["workers"]),
        "api": api,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }


# ----------------------------------------------------------------------------- main


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = result["sweep"]
    n = [p["workers"] for p in sweep]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(n, [100 * p["overhead_vs_engine_wall"] for p in sweep], "o-", label="measured (wall)")
    ax.plot(n, [100 * p["overhead_vs_engine_worker_cpu"] for p in sweep], "s-", label="worker CPU")
    ax.axhline(1, color="grey", ls=":", label="1% goal")
    ax.set(xlabel="decode workers", ylabel="% of engine time", title="coordination overhead")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.legend()
    ax = axes[1]
    ax.plot(n, [p["rationales_per_s"] for p in sweep], "o-", label="measured")
    ax.plot(n, [p["ideal_rationales_per_s"] for p in sweep], "k--", label="engine-bound ideal")
    ax.set(xlabel="decode workers", ylabel="rationales / s", title="throughput")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.legend()
    ax = axes[2]
    ax.plot(n, [p["api"]["p99_ms"] for p in sweep], "o-", label="API p99")
    ax.plot(n, [100 * p["host_cpu_busy"] for p in sweep], "s-", label="host CPU busy %")
    ax.set(xlabel="decode workers", title="API p99 (ms) and host CPU (%)")
    ax.set_xscale("log", base=2)
    ax.legend()
    fig.suptitle(
        f"contrail fleet simulation ({result['machine']['nproc']} CPUs, simulated "
        f"{result['settings']['profile']}), {result['provenance']['sha'][:7]}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", default="1,4,8,16,32")
    ap.add_argument("--items-per-worker", type=int, default=2048)
    ap.add_argument("--big-items", type=int, default=1_000_000, help="0: no big job")
    ap.add_argument("--big-side-items", type=int, default=20_000, help="each other tenant's job")
    ap.add_argument("--finalizers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--batch-shards", type=int, default=1)
    ap.add_argument("--rationale-tokens", type=int, default=48)
    ap.add_argument("--timeout", type=float, default=5400)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "scale.json")
    args = ap.parse_args()
    fleets = sorted({int(x) for x in args.workers.split(",")})

    provenance = git_sha()
    options = {"rationale_tokens": args.rationale_tokens}
    settings = {
        "profile": "h100-llama3-8b",
        "shard_size": args.shard_size,
        "batch_shards": args.batch_shards,
        "decoding": DECODING,
        "engine_options": options,
    }
    result: dict[str, Any] = {
        "what": "fleet-scale simulation: real API, Valkey, SeaweedFS, finalizers and decode "
        "workers; the GPU simulated (contrail.worker.engine.simulated)",
        "command": " ".join(["bench/scale.py", *sys.argv[1:]]),
        "settings": settings,
        "machine": {"nproc": os.cpu_count(), "loadavg_at_start": list(os.getloadavg())},
        "provenance": {**provenance, "date": time.strftime("%Y-%m-%d")},
        "code_dirty": provenance["code_dirty"],
        "sweep": [],
    }
    with seaweed() as s3, tempfile.TemporaryDirectory(prefix="contrail-scale-") as d:
        tmp = Path(d)
        vk = Valkey(tmp / "valkey").start()
        env = {
            **s3.env(),
            "CONTRAIL_REDIS_URL": vk.url,
            "CONTRAIL_STORAGE_URL": s3.url("scale"),
            "CONTRAIL_API_KEYS": ",".join(f"{t}:{k}" for t, k in TENANTS.items()),
            "CONTRAIL_MODEL": MODEL,
            "CONTRAIL_ENGINE": "simulated",
            "CONTRAIL_ENGINE_OPTIONS": json.dumps(options),
            "CONTRAIL_SHARD_SIZE": str(args.shard_size),
            "CONTRAIL_BATCH_SHARDS": str(args.batch_shards),
            "CONTRAIL_CLAIM_IDLE_MS": "600000",
            "CONTRAIL_HEARTBEAT_INTERVAL_S": "3",
            "CONTRAIL_HEARTBEAT_TTL_S": "60",
            "CONTRAIL_RATE_LIMIT_PER_MINUTE": "100000",
            "CONTRAIL_MAX_QUEUED_ITEMS": str(max(2_000_000, 2 * args.big_items)),
            "CONTRAIL_MAX_CONCURRENT_JOBS": "1000",
            "OMP_NUM_THREADS": "1",
        }
        assert s3.proc is not None
        fleet = Fleet(env, tmp, vk, s3.proc.pid)
        from contrail.core.storage import Storage

        for k, v in s3.env().items():
            os.environ[k] = v
        storage = Storage(s3.url("scale"))
        try:
            try:
                fleet.start(args.finalizers)
            except RuntimeError:
                for log in tmp.glob("api-*.log"):
                    print(log.read_text()[-3000:], file=sys.stderr)
                raise
            probe = ApiProbe(fleet)
            probe.start()
            for n in fleets:
                fleet.grow(n)
                share = n * args.items_per_worker // len(TENANTS)
                sizes = [(t, share) for t in TENANTS]
                phase = run_phase(fleet, probe, storage, f"sweep{n}", sizes, args.timeout)
                result["sweep"].append(phase)
                _report(phase)
            if args.big_items:
                sizes = [("alpha", args.big_items)] + [
                    (t, args.big_side_items) for t in list(TENANTS)[1:]
                ]
                result["big_job"] = run_phase(fleet, probe, storage, "big", sizes, args.timeout)
                _report(result["big_job"])
            probe.done.set()
        finally:
            fleet.stop()
            vk.stop()
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if result["sweep"]:
        plot(result, args.out.with_suffix(".png"))
    return 0


def _report(p: dict[str, Any]) -> None:
    print(
        f"[{p['phase']}] {p['workers']} workers, {p['rationales']} rationales in "
        f"{p['decode_window_s']} s ({p['rationales_per_s']}/s, ideal "
        f"{p['ideal_rationales_per_s']}/s); overhead wall {p['overhead_vs_engine_wall']:.3f}, "
        f"worker CPU {p['overhead_vs_engine_worker_cpu']:.4f}; host CPU {p['host_cpu_busy']}; "
        f"API p99 {p['api']['p99_ms']} ms; redis {p['redis_commands_per_1m_items']} cmd/1M",
        flush=True,
    )
    for j in p["jobs"]:
        print(f"    {j}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
