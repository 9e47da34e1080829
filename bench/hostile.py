"""Hostile-input benchmark (issue 19): what each hostile request costs the API, and what other
tenants see while four of them run at once.

Starts a real Valkey and the real API (uvicorn, local-disk storage, `tiny` declared so that jobs
are accepted without a worker) and measures:
- each hostile class alone: its status, its wall time and the API's peak RSS growth (sampled
  every 20 ms): a 200 MB cell as JSON lines, a JSON array, gzip and Parquet; a JSON array of
  1,000,000 empty objects (3 MB); a job whose template pads the question to a billion characters;
- the API's baseline: another tenant's GET /v1/models latency every 20 ms with nothing else
  running;
- four hostile tenants at once (processes of their own), each uploading hostile files back to
  back for `--seconds`, while the other tenant's probe runs: its p50/p99, and the API's peak RSS
  growth; once with the classes whose bodies are small (the cost of hostile validation), once
  with all of them (200 MB bodies too: the cost of receiving the bytes, on the same 2 cores).
Writes docs/bench/hostile.json.

    python bench/hostile.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import gzip
import io
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provenance import git_sha  # noqa: E402
from upload import KEY, LatencyProbe, RssSampler, machine, write_result  # noqa: E402

from contrail.testing.servers import ApiServer, valkey  # noqa: E402

HOSTILE_KEYS = [f"hostile-key-{i}-0123456789" for i in range(4)]
CELL = 200 << 20


def _parquet(rows: dict[str, list[object]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(rows), buf)
    return buf.getvalue()


def hostile_bodies() -> dict[str, tuple[str, bytes]]:
    """name -> (filename, body) of every hostile upload class."""
    line = b'{"id": "big", "question": "' + b"x" * CELL + b'", "answer": "a"}'
    return {
        "cell_200mb_jsonl": ("cell.jsonl", line + b"\n"),
        "cell_200mb_json_array": ("cell.json", b"[" + line + b"]"),
        "cell_200mb_gzip": ("cell.jsonl.gz", gzip.compress(line + b"\n", compresslevel=1)),
        "cell_200mb_parquet": (
            "cell.parquet",
            _parquet({"id": ["big"], "question": ["x" * CELL], "answer": ["a"]}),
        ),
        "empty_objects_1m_json_array": ("empty.json", b"[" + b",".join([b"{}"] * 1_000_000) + b"]"),
    }


def post_file(url: str, key: str, filename: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/files",
        params={"task": "generic", "filename": filename},
        content=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=600,
    )


def hostile_template(url: str) -> httpx.Response:
    body = {
        "items": [{"id": "t", "question": "q?", "answer": "a"}],
        "model": "tiny",
        "template": "Q: {question:>999999999}\nA: {answer}.",
    }
    return httpx.post(
        f"{url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=600
    )


def measured(pid: int, send: Callable[[], httpx.Response]) -> dict[str, object]:
    sampler = RssSampler(pid)
    before = sampler.rss()
    sampler.start()
    t0 = time.perf_counter()
    r = send()
    seconds = time.perf_counter() - t0
    peak = sampler.stop()
    error = r.json().get("error", {}) if r.status_code >= 400 else {}
    return {
        "status": r.status_code,
        "seconds": round(seconds, 3),
        "api_rss_growth_mb": round((peak - before) / 2**20, 1),
        "message": str(error.get("message", ""))[:200],
    }


def hostile_tenant(url: str, i: int, classes: list[str], seconds: float, out: Any) -> None:
    """One hostile tenant, in a process of its own (so that its sending does not hold the
    probe's GIL): its classes' uploads back to back for `seconds`."""
    bodies = {name: body for name, body in hostile_bodies().items() if name in classes}
    out.put("ready")
    sent = []
    n = i
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        name = classes[n % len(classes)]
        filename, body = bodies[name]
        t0 = time.perf_counter()
        r = post_file(url, HOSTILE_KEYS[i], filename, body)
        sent.append((name, r.status_code, time.perf_counter() - t0))
        n += 1
    out.put(sent)


def concurrent(url: str, pid: int, classes: list[str], seconds: float) -> dict[str, object]:
    """Four hostile tenants uploading back to back while another tenant's probe runs."""
    ctx = multiprocessing.get_context("spawn")
    results: Any = ctx.Queue()
    tenants = [
        ctx.Process(target=hostile_tenant, args=(url, i, classes, seconds, results))
        for i in range(4)
    ]
    for p in tenants:
        p.start()
    for _ in tenants:  # each builds its bodies (up to 1 GB) before the clock starts
        assert results.get(timeout=300) == "ready"
    sampler = RssSampler(pid)
    before = sampler.rss()
    probe = LatencyProbe(url)
    sampler.start()
    probe.start()
    sent = [row for _ in tenants for row in results.get(timeout=seconds + 600)]
    latency = probe.stop()
    peak = sampler.stop()
    for p in tenants:
        p.join(60)
    by_status: dict[str, int] = {}
    for _, status, _ in sent:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
    return {
        "hostile_tenants": 4,
        "classes": classes,
        "seconds": seconds,
        "hostile_requests": len(sent),
        "hostile_statuses": by_status,
        "hostile_max_seconds": round(max((s for *_, s in sent), default=0.0), 3),
        "api_rss_growth_mb": round((peak - before) / 2**20, 1),
        "other_tenant_requests": latency,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "hostile.json")
    args = ap.parse_args()

    load_before = os.getloadavg()
    bodies = hostile_bodies()
    keys = ",".join([f"bench:{KEY}", *(f"hostile{i}:{k}" for i, k in enumerate(HOSTILE_KEYS))])
    with tempfile.TemporaryDirectory(prefix="contrail-hostile-") as tmp_name, valkey() as redis:
        tmp = Path(tmp_name)
        env = {
            **os.environ,
            "CONTRAIL_REDIS_URL": redis.url,
            "CONTRAIL_STORAGE_URL": f"file://{tmp / 'storage'}",
            "CONTRAIL_API_KEYS": keys,
            "CONTRAIL_DECLARED_MODELS": "tiny",
            "CONTRAIL_RATE_LIMIT_PER_MINUTE": "100000",
        }
        api = ApiServer(env, tmp).start()
        try:
            assert api.proc is not None
            pid = api.proc.pid
            alone: dict[str, object] = {
                name: measured(pid, lambda f=filename, b=body: post_file(api.url, KEY, f, b))
                for name, (filename, body) in bodies.items()
            }
            alone["template_pad_1e9"] = measured(pid, lambda: hostile_template(api.url))
            probe = LatencyProbe(api.url)
            probe.start()
            time.sleep(min(10.0, args.seconds))
            baseline = probe.stop()
            # Hostile validation (small bodies), then hostile bytes too (200 MB bodies as well).
            small = [name for name, (_, body) in bodies.items() if len(body) < 16 << 20]
            together = {
                "small_bodies": concurrent(api.url, pid, small, args.seconds),
                "all_classes": concurrent(api.url, pid, list(bodies), args.seconds),
            }
        finally:
            api.stop()

    result = {
        "benchmark": "hostile",
        "versions": {"contrail": git_sha()},
        "machine": machine(load_before),
        "alone": alone,
        "other_tenant_baseline": baseline,
        "four_hostile_tenants": together,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
