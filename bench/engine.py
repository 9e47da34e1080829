"""Engine benchmark: the pair engine against greedy, the paper's procedure, CFG and the reference.

Same items for every contender: the first N StrategyQA dev and N CommonsenseQA v1.0 dev items,
real few-shot prompts (pipeline.plan, 6 demonstrations, contrastive-wrong, lambda 0.5, alpha 0),
max_new_tokens 64. Contenders (one process per model, run interleaved A B C D E, A B C D E, ...):

  greedy     vLLM plain greedy through VllmPairEngine (greedy-mode requests, same prompts)
  pair       VllmPairEngine, contrastive-wrong (the product)
  paper      the paper's released procedure (bench/paper_baseline.py)
  cfg        transformers generate(guidance_scale=2, negative_prompt_ids), batched, left padded
  reference  contrail's ReferenceEngine (transformers, pairs side by side, KV cache)

vLLM's prefix cache is reset before every timed run (within a run the shared few-shot prefix is
cached, which is the design). The slow contenders may run on an evenly spread subset of the items
(--slow-items); rationales/s is what compares.

    python bench/engine.py                       # both models, writes docs/bench/engine*.json/png
    python bench/engine.py --model tiny --items 16 --reps 1     # a quick try
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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
    ratio,
    subset,
    timed,
    versions,
    write_json,
)

from contrail.client.types import DecodingMode

MODELS = ("tiny", "smollm2-135m")
ALL = ("greedy", "pair", "paper", "cfg", "reference")


def run_model(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from contrail.worker.engine.reference import ReferenceEngine
    from contrail.worker.engine.vllm_pair import VllmOptions, VllmPairEngine
    from contrail.worker.models import resolve_model

    load_before = list(os.getloadavg())
    spec = resolve_model(args.model)
    contrastive = bench_requests(args.items, max_new_tokens=args.max_new_tokens)
    greedy = bench_requests(
        args.items, mode=DecodingMode.GREEDY, max_new_tokens=args.max_new_tokens
    )
    n_slow = args.slow_items if args.slow_items else len(contrastive)
    slow = subset(contrastive, n_slow)
    wanted = [c for c in args.contenders.split(",") if c]

    t0 = time.perf_counter()
    options = VllmOptions()  # the product's defaults
    engine = VllmPairEngine(str(spec.path), spec.name, options)
    vllm_start_s = time.perf_counter() - t0
    ref = ReferenceEngine(spec)  # the product's defaults (max_batch 16, float32, sdpa)
    threads = torch.get_num_threads()

    from cfg_baseline import CfgBaseline
    from paper_baseline import PaperBaseline

    paper = PaperBaseline(ref.model, ref.tokenizer, sorted(ref.eos_ids))
    cfg = CfgBaseline(ref.model, ref.tokenizer, batch_size=args.cfg_batch)
    last: dict[str, list[list[int]]] = {}

    def run_greedy() -> tuple[int, int, dict[str, Any]]:
        engine.llm.reset_prefix_cache()
        res = engine.generate(greedy)
        last["greedy"] = [r.token_ids for r in res]
        return len(res), sum(r.completion_tokens for r in res), {}

    def run_pair() -> tuple[int, int, dict[str, Any]]:
        engine.llm.reset_prefix_cache()
        before = (
            engine.stats.waves,
            engine.stats.pairs_continued,
            engine.stats.extra_tokens,
            engine.stats.lockstep_failures,
        )
        res = engine.generate(contrastive)
        last["pair"] = [r.token_ids for r in res]
        tokens = sum(r.completion_tokens for r in res)
        waves = engine.stats.waves - before[0]
        extra = engine.stats.extra_tokens - before[2]
        return (
            len(res),
            tokens,
            {
                "waves": waves,
                "pairs_continued": engine.stats.pairs_continued - before[1],
                "extra_tokens": extra,
                "extra_token_fraction": round(extra / max(1, 2 * tokens), 4),
                "lockstep_failures": engine.stats.lockstep_failures - before[3],
                "errors": sum(r.error is not None for r in res),
                "continued_request_ids": [r.request_id for r in res if r.continuations],
            },
        )

    def run_paper() -> tuple[int, int, dict[str, Any]]:
        out = [paper.decode(r) for r in slow]
        last["paper"] = out
        return len(out), sum(len(x) for x in out), {}

    def run_cfg() -> tuple[int, int, dict[str, Any]]:
        out = cfg.generate(slow)
        last["cfg"] = out
        return len(out), sum(len(x) for x in out), {}

    def run_reference() -> tuple[int, int, dict[str, Any]]:
        res = ref.generate(slow)
        last["reference"] = [r.token_ids for r in res]
        return len(res), sum(r.completion_tokens for r in res), {}

    runners = {
        "greedy": (run_greedy, f"vLLM greedy, {len(greedy)} rationales"),
        "pair": (run_pair, f"vLLM pair engine, {len(contrastive)} rationales"),
        "paper": (run_paper, f"paper procedure, {len(slow)} rationales (subset)"),
        "cfg": (run_cfg, f"transformers CFG generate, batch {args.cfg_batch}, {len(slow)}"),
        "reference": (run_reference, f"ReferenceEngine max_batch 16, {len(slow)} rationales"),
    }

    def contender(name: str) -> Contender:
        fn, note = runners[name]
        return Contender(name, lambda: timed(fn), note)

    contenders = [contender(n) for n in wanted]

    # Warm-up (first-call costs, lazy inits) on two items each, not timed.
    engine.generate(contrastive[:2])
    engine.generate(greedy[:2])
    ref.generate(slow[:2])
    cfg.generate(slow[:2])
    paper.decode(slow[0])

    interleave(contenders, args.reps)

    # Equal work: how many rationales equal the pair engine's, token for token.
    pair_ids = last.get("pair")
    agreement: dict[str, Any] = {}
    if pair_ids is not None:
        index = {id(r): k for k, r in enumerate(contrastive)}
        slow_pair = [pair_ids[index[id(r)]] for r in slow]
        for name in ("paper", "reference", "cfg"):
            if name in last:
                same = sum(a == b for a, b in zip(last[name], slow_pair, strict=True))
                prefix = sum(
                    a[: len(b)] == b or b[: len(a)] == a
                    for a, b in zip(last[name], slow_pair, strict=True)
                )
                agreement[name] = {
                    "differing_request_ids": [
                        r.request_id
                        for r, a, b in zip(slow, last[name], slow_pair, strict=True)
                        if a != b
                    ],
                    "identical": same,
                    "one_is_prefix_of_other": prefix,
                    "of": len(slow),
                }

    summaries = {c.name: c.summary() for c in contenders}

    def med(name: str) -> float | None:
        value = summaries.get(name, {}).get("median_rationales_per_s")
        return float(value) if value is not None else None

    def med_tokens(name: str) -> float | None:
        value = summaries.get(name, {}).get("median_tokens_per_s")
        return float(value) if value is not None else None

    return {
        "benchmark": "engine",
        "model": spec.name,
        "machine": {**machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": versions(),
        "settings": {
            "items_per_task": args.items,
            "tasks": ["strategyqa dev", "csqa v1.0 dev"],
            "rationales": len(contrastive),
            "slow_contender_rationales": len(slow),
            "num_demonstrations": 6,
            "mode": "contrastive-wrong, lambda 0.5, alpha 0",
            "max_new_tokens": args.max_new_tokens,
            "repetitions": args.reps,
            "vllm_options": {k: v for k, v in vars(options).items() if k != "extra"},
            "vllm_max_num_batched_tokens": engine._max_batched,
            "vllm_kv_cache_tokens": engine._kv_tokens,
            "vllm_start_seconds": round(vllm_start_s, 1),
            "torch_threads": threads,
            "dtype": "float32 everywhere",
            "cfg_batch": args.cfg_batch,
            "reference_max_batch": ref.max_batch,
        },
        "contenders": summaries,
        "ratios_rationales_per_s": {
            "pair/greedy": ratio(med("pair"), med("greedy")),
            "pair/paper": ratio(med("pair"), med("paper")),
            "pair/cfg": ratio(med("pair"), med("cfg")),
            "pair/reference": ratio(med("pair"), med("reference")),
        },
        "ratios_tokens_per_s": {
            "pair/greedy": ratio(med_tokens("pair"), med_tokens("greedy")),
            "pair/paper": ratio(med_tokens("pair"), med_tokens("paper")),
        },
        "agreement_with_pair": agreement,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        names = list(res["contenders"])
        values = [res["contenders"][n]["median_rationales_per_s"] for n in names]
        colors = ["tab:red" if n == "pair" else "tab:gray" for n in names]
        bars = ax.bar(names, values, color=colors)
        ax.set_yscale("log")
        ax.set_ylabel("rationales / s (median, log scale)")
        ax.set_title(f"{res['model']}: {res['settings']['rationales']} rationales, 64 tokens max")
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                f"{v:.3g}",
                (bar.get_x() + bar.get_width() / 2, v),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    fig.suptitle(
        f"contrail engine benchmark ({results[0]['machine']['nproc']} CPU cores, "
        f"{results[0]['machine']['cpu_model']})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path.relative_to(REPO)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="all", help="tiny, smollm2-135m or all (default)")
    ap.add_argument("--items", type=int, default=128, help="items per task (default 128)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--slow-items",
        type=int,
        default=None,
        help="rationales for paper/cfg/reference (default: all for tiny, 32 for smollm2)",
    )
    ap.add_argument("--cfg-batch", type=int, default=32)
    ap.add_argument("--contenders", default=",".join(ALL))
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument(
        "--combine-only",
        action="store_true",
        help="only merge docs/bench/engine_<model>.json files into engine.json + engine.png",
    )
    args = ap.parse_args()

    if args.combine_only:
        found = [args.out / f"engine_{m}.json" for m in MODELS]
        combine([json.loads(p.read_text()) for p in found if p.exists()], args.out)
        return 0
    if args.model != "all":
        if args.slow_items is None and args.model != "tiny":
            args.slow_items = 32
        result = run_model(args)
        write_json(args.out / f"engine_{args.model}.json", result)
        print(json.dumps(result["ratios_rationales_per_s"]))
        return 0

    results = []
    for model in MODELS:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--model", model]
        for flag in ("items", "max_new_tokens", "reps", "slow_items", "cfg_batch", "contenders"):
            value = getattr(args, flag)
            if value is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(value)]
        cmd += ["--out", str(args.out)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        results.append(json.loads((args.out / f"engine_{model}.json").read_text()))
    combine(results, args.out)
    return 0


def combine(results: list[dict[str, Any]], out: Path) -> None:
    write_json(out / "engine.json", {"benchmark": "engine", "results": results})
    plot(results, out / "engine.png")


if __name__ == "__main__":
    raise SystemExit(main())
