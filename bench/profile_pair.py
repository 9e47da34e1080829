"""Profile the pair engine's hot path on the tiny model, and measure processor changes before/after.

    python bench/profile_pair.py profile   # pyinstrument over VllmPairEngine.generate
                                           #   -> docs/bench/profile_pair_tiny.txt (--html: + .html)
    python bench/profile_pair.py admission --model smollm2-135m --items 128
                                           # KV admission before/after + vLLM greedy, one engine
                                           #   -> docs/bench/admission_ab_<model>.json
    python bench/profile_pair.py ab        # before/after, one process, interleaved:
        - apply() micro-benchmark on a fake persistent batch (128 pairs, SmolLM2-sized vocab)
        - end to end: two tiny-model engines, one with the frozen pre-change processor
          (pair_processor.py at BEFORE_REVISION, read from git), one with the product's;
          same requests
                                           #   -> docs/bench/profile_ab.json

The tiny model is where Python overhead dominates: its forward pass costs little, so whatever the
processor does per step shows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from benchlib import (
    OUT_DIR,
    Contender,
    bench_requests,
    interleave,
    machine,
    ratio,
    timed,
    versions,
    write_json,
)
from provenance import git_sha

# pair_processor.py as it was before the performance work (the "before" of the A/B runs).
BEFORE_REVISION = "15922b1f8478e4c1f46ac9ea2951a8b8f29a9397"


# Where pair_processor.py lived at a revision: its path since the source roots, and before.
PROCESSOR_PATHS = (
    "worker/contrail/worker/engine/pair_processor.py",
    "worker/engine/pair_processor.py",
)
BEFORE = {"revision": BEFORE_REVISION}  # `--before REV` replaces it


def _legacy_module() -> ModuleType:
    """The processor at the "before" revision, loaded from git so the tree carries no copy."""
    repo = Path(__file__).resolve().parents[1]
    for path in PROCESSOR_PATHS:
        shown = subprocess.run(
            ["git", "show", f"{BEFORE['revision']}:{path}"],
            cwd=repo,
            capture_output=True,
            text=True,
        )
        if shown.returncode == 0:
            source = shown.stdout
            break
    else:
        raise SystemExit(f"no pair_processor.py at {BEFORE['revision']}")
    module = ModuleType("legacy_pair_processor")
    sys.modules[module.__name__] = module
    exec(compile(source, "legacy_pair_processor.py", "exec"), module.__dict__)
    return module


def profile(args: argparse.Namespace) -> None:
    from pyinstrument import Profiler

    from contrail.worker.engine.vllm_pair import VllmOptions, VllmPairEngine
    from contrail.worker.models import resolve_model

    provenance = git_sha()  # taken first, like the other benchmarks
    spec = resolve_model(args.model)
    options = VllmOptions()
    if args.legacy:
        legacy = _legacy_module()
        options.extra["logits_processors"] = [legacy.ContrastivePairLogitsProcessor]
    engine = VllmPairEngine(str(spec.path), spec.name, options)
    requests = bench_requests(args.items, max_new_tokens=64)
    engine.generate(requests[:2])
    engine.llm.reset_prefix_cache()
    profiler = Profiler(interval=0.002)
    start = time.perf_counter()
    profiler.start()
    engine.generate(requests)
    profiler.stop()
    took = time.perf_counter() - start
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    header = (
        f"# pyinstrument, {args.model}, {len(requests)} rationales x 64 tokens max, "
        f"{took:.2f} s, load {os.getloadavg()}\n"
        f"# provenance: {json.dumps(provenance)}\n"
    )
    out = args.out / f"profile_pair_{args.model}{args.tag}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + text)
    if args.html:  # ~1.3 MB: not kept in docs/ by default
        (args.out / f"profile_pair_{args.model}{args.tag}.html").write_text(profiler.output_html())
    print(header + text[:6000])


def _fake_batch(processor: Any, pairs: int, vocab: int) -> tuple[Any, list[list[int]]]:
    """Add `pairs` pairs to a processor; returns (logits, live output lists)."""
    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from contrail.worker.engine.pair_processor import PairSpec

    outputs: list[list[int]] = []
    added = []
    for k in range(pairs):
        for role in (0, 1):
            spec = PairSpec(
                key=f"p{k}",
                role=role,
                lam=0.5,
                alpha=0.0,
                temperature=1.0,
                eos=0,
                stop=("\n\n", "\nQ:"),
                prefix_tail=(),
            )
            out: list[int] = [5, 6, 7]
            outputs.append(out)
            params = SamplingParams(temperature=0.0, max_tokens=64, extra_args=spec.to_extra())
            added.append((2 * k + role, params, [1, 2, 3], out))
    processor.update_state(
        BatchUpdate(batch_size=2 * pairs, removed=[], added=added, moved=[])  # type: ignore[arg-type]
    )
    torch.manual_seed(0)
    return torch.randn(2 * pairs, vocab), outputs


def ab(args: argparse.Namespace) -> None:
    import torch

    from contrail.worker.engine import pair_processor
    from contrail.worker.engine.vllm_pair import VllmOptions, VllmPairEngine
    from contrail.worker.models import resolve_model

    load_before = list(os.getloadavg())
    spec = resolve_model(args.model)
    config = SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(spec.path)))
    classes = {
        "before": _legacy_module().ContrastivePairLogitsProcessor,
        "after": pair_processor.ContrastivePairLogitsProcessor,
    }

    # 1. apply() alone: steps over a fake batch, outputs growing like real decoding.
    def micro(cls: Any) -> Contender:
        proc = cls(config, torch.device("cpu"), False)
        base, outputs = _fake_batch(proc, args.micro_pairs, args.micro_vocab)

        def run() -> tuple[int, int, dict[str, Any]]:
            for out in outputs:
                del out[3:]
            for step in range(args.micro_steps):
                proc.apply(base.clone())
                for out in outputs:
                    out.append(10 + step % 50)
            return args.micro_steps, args.micro_steps * args.micro_pairs, {}

        return Contender("micro", lambda: timed(run))

    # 2. end to end on the engine.
    requests = bench_requests(args.items, max_new_tokens=64)
    engines = {
        name: VllmPairEngine(
            str(spec.path),
            spec.name,
            VllmOptions(kv_cache_bytes=512 * 1024**2, extra={"logits_processors": [cls]}),
        )
        for name, cls in classes.items()
    }

    def e2e(engine: VllmPairEngine) -> Contender:
        def run() -> tuple[int, int, dict[str, Any]]:
            engine.llm.reset_prefix_cache()
            res = engine.generate(requests)
            return len(res), sum(r.completion_tokens for r in res), {}

        engine.generate(requests[:2])
        return Contender("e2e", lambda: timed(run))

    contenders = []
    for name, cls in classes.items():
        m = micro(cls)
        m.name = f"micro-{name}"
        e = e2e(engines[name])
        e.name = f"e2e-{name}"
        contenders += [m, e]
    interleave(contenders, args.reps)

    # The two engines must write the same tokens.
    outs = {n: e.generate(requests) for n, e in engines.items()}
    same = all(
        a.token_ids == b.token_ids for a, b in zip(outs["before"], outs["after"], strict=True)
    )
    summary = {c.name: c.summary() for c in contenders}

    def med_s(name: str) -> float | None:
        v = summary[name]["median_seconds"]
        return float(v) if v is not None else None

    result = {
        "benchmark": "processor before/after",
        "model": spec.name,
        "machine": {**machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": versions(),
        "settings": {
            "micro": f"{args.micro_pairs} pairs, vocab {args.micro_vocab}, "
            f"{args.micro_steps} apply() calls per repetition",
            "e2e": f"{len(requests)} contrastive rationales, max_new_tokens 64, 6 demos",
            "repetitions": args.reps,
            "before_revision": BEFORE["revision"],
        },
        "contenders": summary,
        "speedup_before_over_after_seconds": {
            "micro_apply": ratio(med_s("micro-before"), med_s("micro-after")),
            "e2e": ratio(med_s("e2e-before"), med_s("e2e-after")),
        },
        "micro_ms_per_apply": {
            n: round(1000 * (med_s(f"micro-{n}") or 0) / args.micro_steps, 3) for n in classes
        },
        "identical_tokens": same,
    }
    write_json(args.out / f"profile_ab_{args.model}.json", result)
    print(result["speedup_before_over_after_seconds"], result["micro_ms_per_apply"])


def admission(args: argparse.Namespace) -> None:
    """KV admission before/after (per-member whole prompts vs shared prompt blocks counted once),
    with vLLM greedy alongside, one engine, interleaved."""
    from benchlib import ratio as _ratio

    from contrail.client.types import DecodingMode
    from contrail.worker.engine.vllm_pair import VllmOptions, VllmPairEngine
    from contrail.worker.models import resolve_model

    load_before = list(os.getloadavg())
    spec = resolve_model(args.model)
    engine = VllmPairEngine(str(spec.path), spec.name, VllmOptions())
    contrastive = bench_requests(args.items, max_new_tokens=64)
    greedy = bench_requests(args.items, mode=DecodingMode.GREEDY, max_new_tokens=64)
    engine.generate(contrastive[:2])
    engine.generate(greedy[:2])

    def run_greedy() -> tuple[int, int, dict[str, Any]]:
        engine.llm.reset_prefix_cache()
        res = engine.generate(greedy)
        return len(res), sum(r.completion_tokens for r in res), {}

    def pair_runner(shared: bool) -> Any:
        def run() -> tuple[int, int, dict[str, Any]]:
            engine.options.shared_prefix_admission = shared
            engine.llm.reset_prefix_cache()
            s = engine.stats
            before = (s.waves, s.pairs_continued, s.extra_tokens)
            res = engine.generate(contrastive)
            tokens = sum(r.completion_tokens for r in res)
            return (
                len(res),
                tokens,
                {
                    "waves": s.waves - before[0],
                    "pairs_continued": s.pairs_continued - before[1],
                    "extra_tokens": s.extra_tokens - before[2],
                    "extra_token_fraction": round((s.extra_tokens - before[2]) / (2 * tokens), 4),
                    "token_ids_hash": hash(tuple(tuple(r.token_ids) for r in res)),
                },
            )

        return run

    runs = {
        "greedy": run_greedy,
        "pair-admission-before": pair_runner(False),
        "pair-admission-after": pair_runner(True),
    }
    contenders = [Contender(n, lambda f=f: timed(f)) for n, f in runs.items()]  # type: ignore[misc]
    interleave(contenders, args.reps)
    summary = {c.name: c.summary() for c in contenders}

    def med(name: str) -> float | None:
        v = summary[name]["median_rationales_per_s"]
        return float(v) if v is not None else None

    hashes = {
        e["token_ids_hash"]
        for n in ("pair-admission-before", "pair-admission-after")
        for e in summary[n]["extra"]
    }
    result = {
        "benchmark": "KV admission before/after, with vLLM greedy",
        "model": spec.name,
        "machine": {**machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": versions(),
        "settings": {
            "rationales": len(contrastive),
            "items_per_task": args.items,
            "max_new_tokens": 64,
            "num_demonstrations": 6,
            "repetitions": args.reps,
            "vllm_kv_cache_tokens": engine._kv_tokens,
            "vllm_max_num_batched_tokens": engine._max_batched,
        },
        "contenders": summary,
        "ratios_rationales_per_s": {
            "after/before": _ratio(med("pair-admission-after"), med("pair-admission-before")),
            "pair(before)/greedy": _ratio(med("pair-admission-before"), med("greedy")),
            "pair(after)/greedy": _ratio(med("pair-admission-after"), med("greedy")),
        },
        "identical_tokens_across_runs": len(hashes) == 1,
    }
    write_json(args.out / f"admission_ab_{args.model}.json", result)
    print(result["ratios_rationales_per_s"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=("profile", "ab", "admission"))
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--items", type=int, default=64, help="items per task")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--micro-pairs", type=int, default=128)
    ap.add_argument("--micro-vocab", type=int, default=49152)
    ap.add_argument("--micro-steps", type=int, default=64)
    ap.add_argument("--html", action="store_true", help="also write pyinstrument's HTML report")
    ap.add_argument(
        "--legacy", action="store_true", help="profile with the frozen pre-change processor"
    )
    ap.add_argument(
        "--before",
        default=BEFORE_REVISION,
        help="revision whose pair_processor.py is the 'before' of ab and --legacy",
    )
    ap.add_argument("--tag", default="", help="suffix of the profile's file name")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args()
    BEFORE["revision"] = args.before
    if args.what == "profile":
        profile(args)
    elif args.what == "admission":
        admission(args)
    else:
        ab(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
