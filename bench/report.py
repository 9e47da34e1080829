"""Markdown tables from the benchmark JSON files under docs/bench (for docs/bench/PERFORMANCE.md).

python bench/report.py            # prints the tables
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchlib import OUT_DIR

NAMES = {
    "greedy": "vLLM greedy (floor)",
    "pair": "**pair engine** (contrastive-wrong)",
    "paper": "paper's procedure",
    "cfg": "transformers CFG generate",
    "reference": "reference engine",
}


def _load(name: str) -> dict[str, Any] | None:
    path = OUT_DIR / name
    return json.loads(path.read_text()) if path.exists() else None


def engine_tables(res: dict[str, Any]) -> str:
    m, s = res["machine"], res["settings"]
    lines = [
        f"#### {res['model']}: {s['rationales']} rationales "
        f"({s['items_per_task']} StrategyQA + {s['items_per_task']} CSQA), "
        f"{s['num_demonstrations']} demonstrations, max_new_tokens {s['max_new_tokens']}, "
        f"medians of {s['repetitions']}",
        "",
        "| contender | rationales | tokens produced | rationales/s | tokens/s | runs (s) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, c in res["contenders"].items():
        toks = c["tokens"]
        tok = str(toks[0]) if len(set(toks)) == 1 else "/".join(map(str, toks))
        runs = ", ".join(f"{x:.1f}" for x in c["seconds"])
        lines.append(
            f"| {NAMES.get(name, name)} | {c['rationales']} | {tok} | "
            f"{c['median_rationales_per_s']:.3f} | {c['median_tokens_per_s']:.1f} | {runs} |"
        )
    r = res["ratios_rationales_per_s"]
    lines += [
        "",
        "| ratio (rationales/s) | value |",
        "|---|---:|",
        *(f"| {k} | {v if v is not None else 'n/a'} |" for k, v in r.items()),
    ]
    pair = res["contenders"].get("pair")
    if pair:
        e = pair["extra"]
        lines += [
            "",
            "Pair engine desync per run: waves "
            + ", ".join(str(x["waves"]) for x in e)
            + "; pairs continued "
            + ", ".join(str(x["pairs_continued"]) for x in e)
            + "; extra tokens "
            + ", ".join(f"{x['extra_tokens']} ({100 * x['extra_token_fraction']:.1f}%)" for x in e)
            + ".",
        ]
    agree = res.get("agreement_with_pair") or {}
    if agree:
        lines += [
            "Token-for-token agreement with the pair engine on the slow contenders' items: "
            + "; ".join(
                f"{k} {v['identical']}/{v['of']} identical "
                f"({v['one_is_prefix_of_other']}/{v['of']} prefix-equal)"
                for k, v in agree.items()
            )
            + "."
        ]
    lines += [
        "",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}; load average before "
        f"{m['loadavg_before'][0]:.1f}, after {m['loadavg_after'][0]:.1f}. "
        f"torch threads {s['torch_threads']}; vLLM start-up {s['vllm_start_seconds']} s; "
        f"vLLM KV cache {s['vllm_kv_cache_tokens']} tokens, token budget "
        f"{s['vllm_max_num_batched_tokens']}.",
        "",
    ]
    return "\n".join(lines)


def sweep_table(res: dict[str, Any]) -> str:
    lines = [
        f"#### Sweep, {res['model']} (medians of {res['settings']['repetitions']})",
        "",
        "| demos | pairs/wave | rationales | rationales/s | tokens/s | waves | pairs continued "
        "| extra tokens (median) |",
        "|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for p in sorted(res["points"], key=lambda p: (p["demonstrations"], p["pairs_per_wave"])):
        lines.append(
            f"| {p['demonstrations']} | {p['pairs_per_wave']} | {p['rationales']} | "
            f"{p['median_rationales_per_s']:.3f} | {p['median_tokens_per_s']:.1f} | "
            f"{'/'.join(map(str, p['waves']))} | {'/'.join(map(str, p['pairs_continued']))} | "
            f"{100 * p['median_extra_token_fraction']:.2f}% |"
        )
    m = res["machine"]
    lines += [
        "",
        f"Machine: {m['nproc']} cores, load average before {m['loadavg_before'][0]:.1f}, "
        f"after {m['loadavg_after'][0]:.1f}.",
        "",
    ]
    return "\n".join(lines)


def ab_table(res: dict[str, Any]) -> str:
    c = res["contenders"]
    lines = [
        f"#### Processor before/after ({res['model']}, medians of "
        f"{res['settings']['repetitions']}, interleaved in one process)",
        "",
        "| measurement | before (s) | after (s) | before/after |",
        "|---|---:|---:|---:|",
        f"| apply() x steps, {res['settings']['micro']} | {c['micro-before']['median_seconds']} | "
        f"{c['micro-after']['median_seconds']} | "
        f"{res['speedup_before_over_after_seconds']['micro_apply']} |",
        f"| end to end, {res['settings']['e2e']} | {c['e2e-before']['median_seconds']} | "
        f"{c['e2e-after']['median_seconds']} | {res['speedup_before_over_after_seconds']['e2e']} |",
        "",
        f"Identical tokens before/after: {res['identical_tokens']}.",
        "",
    ]
    return "\n".join(lines)


def admission_table(res: dict[str, Any]) -> str:
    c, s = res["contenders"], res["settings"]
    lines = [
        f"#### KV admission before/after ({res['model']}, {s['rationales']} rationales, "
        f"medians of {s['repetitions']}, one engine, interleaved)",
        "",
        "| contender | rationales/s | tokens produced | waves | pairs continued | runs (s) |",
        "|---|---:|---:|---|---|---|",
    ]
    for name, v in c.items():
        waves = "/".join(str(e.get("waves", "-")) for e in v["extra"])
        cont = "/".join(str(e.get("pairs_continued", "-")) for e in v["extra"])
        runs = ", ".join(f"{x:.1f}" for x in v["seconds"])
        lines.append(
            f"| {name} | {v['median_rationales_per_s']:.3f} | {v['tokens'][0]} | {waves} | "
            f"{cont} | {runs} |"
        )
    r = res["ratios_rationales_per_s"]
    lines += [
        "",
        "Ratios: " + ", ".join(f"{k} {v}" for k, v in r.items()) + "; identical tokens in every "
        f"pair run: {res['identical_tokens_across_runs']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parts = []
    for model in ("smollm2-135m", "tiny"):
        res = _load(f"engine_{model}.json")
        if res:
            parts.append(engine_tables(res))
    for name in sorted(p.name for p in Path(OUT_DIR).glob("sweep_*.json")):
        res = _load(name)
        if res:
            parts.append(sweep_table(res))
    for name in sorted(p.name for p in Path(OUT_DIR).glob("profile_ab_*.json")):
        res = _load(name)
        if res:
            parts.append(ab_table(res))
    for name in sorted(p.name for p in Path(OUT_DIR).glob("admission_ab_*.json")):
        res = _load(name)
        if res:
            parts.append(admission_table(res))
    print("\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
