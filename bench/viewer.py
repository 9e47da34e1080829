"""The viewer on a 100,000-rationale job: page-load times in a real browser and the JSON calls
behind them, while the job runs (pages read the shard files) and once it is finished (pages read
the merged Parquet).

Starts the local stack (Valkey, SeaweedFS S3, the API under uvicorn, one worker with the tiny
test model), uploads N synthetic yes/no items and runs a contrastive job with a counterfactual
for every item (2N rationales, decoded by the model: nothing is made up), and, with
--compare-items M, a greedy job over the first M of the same items (the comparison's side B).
Timings: the JSON endpoints with httpx (first call = cold cache, then the median of the warm
repeats) and whole page loads in headless Chromium (navigation to
the page's URL until the view says it is ready: HTML, modules, API calls, rendering).

    .venv/bin/python bench/viewer.py [--items 50000] [--engine vllm] [--max-new-tokens 8]
        [--compare-items 5000] [--out docs/bench/viewer.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provenance import git_sha  # noqa: E402

from contrail.testing.browser import chromium_page  # noqa: E402
from contrail.testing.servers import seaweed, valkey  # noqa: E402
from contrail.testing.stack import KEY_A, Stack, items_jsonl  # noqa: E402

REPEATS = 5


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def series(fn: Callable[[], Any]) -> dict[str, float]:
    """Cold (first) call and the median of the warm repeats, in milliseconds."""
    times = [timed(fn) for _ in range(REPEATS)]
    return {
        "cold_ms": round(times[0] * 1000, 1),
        "warm_median_ms": round(statistics.median(times[1:]) * 1000, 1),
    }


def api_calls(c: httpx.Client, job: str, other: str | None, total: int) -> dict[str, Any]:
    base = f"/v1/viewer/jobs/{job}"

    def get(path: str, **params: Any) -> Callable[[], Any]:
        def call() -> Any:
            r = c.get(path, params=params)
            r.raise_for_status()
            return r.json()

        return call

    first = get(f"{base}/records", limit=50)()
    item_id = first["data"][0]["record"]["item_id"]
    out: dict[str, Any] = {
        "records_first_page": series(get(f"{base}/records", limit=50)),
        "records_middle_page": series(get(f"{base}/records", limit=50, offset=total // 2)),
        "records_last_page": series(get(f"{base}/records", limit=50, offset=max(total - 50, 0))),
        "records_tag_counterfactual_middle": series(
            get(f"{base}/records", limit=50, tag="counterfactual", offset=total // 4)
        ),
        "records_answer_no": series(get(f"{base}/records", limit=50, answer="no")),
        "records_text_search": series(get(f"{base}/records", limit=50, q="4999")),
        "item": series(get(f"{base}/item", item_id=item_id)),
        "errors_first_page": series(get(f"{base}/errors", limit=50)),
        "manifest": series(get(f"{base}/manifest")),
        "job": series(get(f"/v1/jobs/{job}")),
        "jobs_list": series(get("/v1/jobs", limit=20)),
    }
    if other:
        out["compare_first_page"] = series(get("/v1/viewer/compare", a=job, b=other, limit=20))
        out["compare_middle_page"] = series(
            get("/v1/viewer/compare", a=job, b=other, limit=20, offset=total // 2)
        )
    return out


def page_loads(base_url: str, job: str, other: str | None, total: int) -> dict[str, Any]:
    item = None
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY_A}"}) as c:
        item = c.get(f"/v1/viewer/jobs/{job}/records", params={"limit": 1}).json()["data"][0]
    item_id = item["record"]["item_id"]
    pages = {
        "jobs": "#/jobs",
        "job_overview": f"#/jobs/{job}",
        "rationales_first_page": f"#/jobs/{job}/rationales",
        "rationales_middle_page": f"#/jobs/{job}/rationales?offset={total // 2}",
        "rationales_counterfactual": f"#/jobs/{job}/rationales?tag=counterfactual",
        "rationales_text_search": f"#/jobs/{job}/rationales?q=4999",
        "item": f"#/jobs/{job}/items/{item_id}",
        "errors": f"#/jobs/{job}/errors",
    }
    if other:
        pages["compare"] = f"#/compare?a={job}&b={other}"
    out: dict[str, Any] = {}
    with chromium_page() as page:
        page.goto(f"{base_url}/ui/")
        page.evaluate("k => sessionStorage.setItem('contrail.apiKey', k)", KEY_A)
        for name, frag in pages.items():

            def load(frag: str = frag) -> None:
                page.goto("about:blank")
                page.goto(f"{base_url}/ui/{frag}")
                page.wait_for_selector(
                    "body[data-state=ready], body[data-state=error]", timeout=120_000
                )
                if page.evaluate("document.body.dataset.state") != "ready":
                    raise RuntimeError(f"{frag}: {page.inner_text('main')[:500]}")

            out[name] = series(load)
    return out


def wait_fraction(c: httpx.Client, job: str, fraction: float) -> dict[str, Any]:
    while True:
        j: dict[str, Any] = c.get(f"/v1/jobs/{job}").json()
        counts = j["request_counts"]
        if j["status"] != "in_progress" or counts["completed"] >= fraction * counts["total"]:
            return j
        time.sleep(2)


def measure(stack: Stack, job: str, other: str | None) -> dict[str, Any]:
    with stack.client() as c:
        j = c.get(f"/v1/jobs/{job}").json()
        page = c.get(f"/v1/viewer/jobs/{job}/records", params={"limit": 1}).json()
        total = page["total"]
        result = {
            "status": j["status"],
            "source": page["source"],
            "rationales_stored": total,
            "api": api_calls(c, job, other, total),
        }
    result["browser"] = page_loads(stack.url, job, other, total)
    return result


def submit(c: httpx.Client, file_id: str, decoding: dict[str, Any]) -> str:
    r = c.post("/v1/jobs", json={"input_file_id": file_id, "model": "tiny", "decoding": decoding})
    r.raise_for_status()
    return str(r.json()["id"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--engine", choices=["reference", "vllm"], default="vllm")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--running-at", type=float, default=0.4, help="measure at this completion")
    ap.add_argument(
        "--compare-items",
        type=int,
        default=0,
        help="also run a greedy job over the first N of the same items, to compare with",
    )
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "viewer.json")
    args = ap.parse_args()

    from contrail.worker.models import tiny_model_path

    cache = tiny_model_path(REPO / ".contrail" / "models").parent
    opts = json.dumps({"max_batch": 64}) if args.engine == "reference" else "{}"
    decoding: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "counterfactual_fraction": 1.0,
        "num_demonstrations": 0,
    }
    result: dict[str, Any] = {
        "what": "viewer page loads and JSON calls on one job, running and finished",
        "items": args.items,
        "model": "tiny (deterministic random tiny Llama: the text is noise, the sizes are real)",
        "engine": args.engine,
        "decoding": decoding,
        "compare_items": args.compare_items,
        "shard_size": 64,
        "storage": "SeaweedFS S3 (weed mini, loopback)",
        "repeats": REPEATS,
        "machine": f"{platform.machine()} cpus={os.cpu_count()}, shared with other work",
        "date": time.strftime("%Y-%m-%d"),
        "versions": {"contrail": git_sha()},
    }
    with seaweed() as s3, valkey() as vk, tempfile.TemporaryDirectory() as tmp:
        stack = Stack(
            Path(tmp),
            s3,
            vk,
            cache,
            CONTRAIL_ENGINE=args.engine,
            CONTRAIL_ENGINE_OPTIONS=opts,
            CONTRAIL_SHARD_SIZE="64",
            CONTRAIL_BATCH_SHARDS="4",
            CONTRAIL_CLAIM_IDLE_MS="600000",
            CONTRAIL_HEARTBEAT_INTERVAL_S="3",
            CONTRAIL_HEARTBEAT_TTL_S="60",
            CONTRAIL_RATE_LIMIT_PER_MINUTE="100000",
        )
        try:
            stack.start_api()
            stack.worker()
            up = stack.upload(items_jsonl(args.items))
            up.raise_for_status()
            t0 = time.perf_counter()
            with stack.client() as c:
                job = submit(c, up.json()["id"], {"mode": "contrastive", **decoding})
                other = None
                if args.compare_items:
                    sub = stack.upload(items_jsonl(args.compare_items))
                    sub.raise_for_status()
                    other = submit(c, sub.json()["id"], {"mode": "greedy", **decoding})
                wait_fraction(c, job, args.running_at)
            result["job"] = job
            result["compare_with"] = other
            result["running"] = measure(stack, job, None)
            print(json.dumps(result["running"], indent=2), flush=True)
            for j in (job, other):
                if j:
                    stack.wait_status(j, ("completed", "failed"), timeout=4 * 3600)
            result["generation_wall_seconds"] = round(time.perf_counter() - t0, 1)
            result["finished"] = measure(stack, job, other)
        finally:
            stack.stop()
    result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
