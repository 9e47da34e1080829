"""Sweep of the pair engine: pairs per wave (1..256) x prompt length (0, 2, 6 demonstrations).

One VllmPairEngine (scheduler max_num_seqs 512, the product's other defaults); pairs per wave is
the driver's wave size, `VllmOptions.max_num_seqs // 2`, set per point. Every point decodes the
same contrastive-wrong requests (StrategyQA + CSQA v1.0 dev, max_new_tokens 64); a point with
p pairs per wave decodes min(all, max(--min-items, 4 p)) of them (at least four waves, so the small
waves do not take hours); rationales/s compares. Points run interleaved across repetitions and the
prefix cache is reset before each. Desync statistics per point: pairs continued, extra tokens
decoded (and their fraction of all decoded tokens), waves run.

    python bench/sweep.py                      # tiny model, writes docs/bench/sweep_tiny.json/png
    python bench/sweep.py --model smollm2-135m --pairs 8,32,128 --items 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchlib import (
    OUT_DIR,
    REPO,
    Contender,
    bench_requests,
    interleave,
    machine,
    subset,
    timed,
    versions,
    write_json,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--items", type=int, default=128, help="items per task (default 128)")
    ap.add_argument("--pairs", default="1,2,4,8,16,32,64,128,256", help="pairs per wave")
    ap.add_argument("--demos", default="0,2,6", help="demonstrations per prompt")
    ap.add_argument("--min-items", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args()

    from contrail.worker.engine.vllm_pair import VllmOptions, VllmPairEngine
    from contrail.worker.models import resolve_model

    load_before = list(os.getloadavg())
    spec = resolve_model(args.model)
    pairs_grid = [int(x) for x in args.pairs.split(",")]
    demos_grid = [int(x) for x in args.demos.split(",")]
    top = max(pairs_grid)
    t0 = time.perf_counter()
    engine = VllmPairEngine(str(spec.path), spec.name, VllmOptions(max_num_seqs=2 * top))
    start_s = time.perf_counter() - t0
    requests = {
        d: bench_requests(args.items, max_new_tokens=args.max_new_tokens, num_demonstrations=d)
        for d in demos_grid
    }
    engine.generate(requests[demos_grid[0]][:2])  # warm-up

    def point(pairs: int, demos: int) -> Contender:
        reqs = subset(requests[demos], max(args.min_items, 4 * pairs))

        def run() -> tuple[int, int, dict[str, Any]]:
            engine.options.max_num_seqs = 2 * pairs
            engine.llm.reset_prefix_cache()
            s = engine.stats
            before = (s.waves, s.pairs_continued, s.extra_tokens, s.lockstep_failures)
            res = engine.generate(reqs)
            tokens = sum(r.completion_tokens for r in res)
            extra = s.extra_tokens - before[2]
            return (
                len(res),
                tokens,
                {
                    "waves": s.waves - before[0],
                    "pairs_continued": s.pairs_continued - before[1],
                    "extra_tokens": extra,
                    "extra_token_fraction": round(extra / max(1, 2 * tokens), 4),
                    "lockstep_failures": s.lockstep_failures - before[3],
                },
            )

        return Contender(f"p{pairs}-d{demos}", lambda: timed(run), f"{len(reqs)} rationales")

    contenders = [point(p, d) for d in demos_grid for p in pairs_grid]
    interleave(contenders, args.reps)

    points = []
    for c in contenders:
        pairs, demos = (int(x[1:]) for x in c.name.split("-"))
        summary = c.summary()
        extras = summary.pop("extra")
        points.append(
            {
                "pairs_per_wave": pairs,
                "demonstrations": demos,
                **summary,
                "pairs_continued": [e["pairs_continued"] for e in extras],
                "extra_tokens": [e["extra_tokens"] for e in extras],
                "median_extra_token_fraction": statistics.median(
                    e["extra_token_fraction"] for e in extras
                ),
                "waves": [e["waves"] for e in extras],
                "lockstep_failures": [e["lockstep_failures"] for e in extras],
            }
        )
    result = {
        "benchmark": "sweep",
        "model": spec.name,
        "machine": {**machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": versions(),
        "settings": {
            "items_per_task": args.items,
            "min_items": args.min_items,
            "items_per_point": "min(all, max(min_items, 4 * pairs_per_wave))",
            "mode": "contrastive-wrong, lambda 0.5, alpha 0",
            "max_new_tokens": args.max_new_tokens,
            "repetitions": args.reps,
            "scheduler_max_num_seqs": 2 * top,
            "vllm_max_num_batched_tokens": engine._max_batched,
            "vllm_kv_cache_tokens": engine._kv_tokens,
            "vllm_start_seconds": round(start_s, 1),
        },
        "points": points,
    }
    write_json(args.out / f"sweep_{args.model}.json", result)
    plot(result, args.out / f"sweep_{args.model}.png")
    return 0


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    by_demo: dict[int, list[dict[str, Any]]] = {}
    for p in result["points"]:
        by_demo.setdefault(p["demonstrations"], []).append(p)
    for demos, pts in sorted(by_demo.items()):
        pts.sort(key=lambda p: p["pairs_per_wave"])
        xs = [p["pairs_per_wave"] for p in pts]
        ax1.plot(xs, [p["median_rationales_per_s"] for p in pts], "o-", label=f"{demos} demos")
        ax2.plot(
            xs,
            [100 * p["median_extra_token_fraction"] for p in pts],
            "o-",
            label=f"{demos} demos",
        )
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("pairs per wave (max_num_seqs / 2)")
        ax.legend()
        ax.grid(alpha=0.3)
    ax1.set_yscale("log")
    ax1.set_ylabel("rationales / s (median)")
    ax1.set_title(f"pair engine throughput, {result['model']}")
    ax2.set_ylabel("extra decoded tokens (% of decoded)")
    ax2.set_title("desync: tokens thrown away and re-decoded")
    ax2.axhline(5, color="tab:red", ls="--", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    raise SystemExit(main())
