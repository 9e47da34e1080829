"""How long a vLLM worker engine takes to start, the first time on a machine and again (issue 22).

For each configuration, with a compile cache of its own (VLLM_CACHE_ROOT in a fresh folder), the
engine is started twice, each time in a new process, as a new worker would be: the first start
compiles, the second should find the compiled model in the cache. Each start builds the product's
`VllmPairEngine` with its default options (torch.compile on) and times it to the end of its
self-check; the child's log says whether vLLM loaded the cached compilation or gave up on it
("Compiling model again due to a load failure"). After each start the child decodes one wave of
real few-shot pair requests (research dev items from the data folder beside the checkout) to warm
up, then the same wave timed: the decode rate that configuration gives.

Configurations:
- `aot-on`: vLLM 0.32's default with torch >= 2.10, AOT compilation (VLLM_USE_AOT_COMPILE=1);
- `contrail`: the engine's own setting, AOT compilation off (VLLM_USE_AOT_COMPILE=0).

    .venv/bin/python bench/cold_start.py --model smollm2-135m
    # -> docs/bench/cold_start_<model>.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import OUT_DIR, TASK_FILES, load_task_items, machine, versions, write_json

BENCH_DIR = Path(__file__).resolve().parent

CONFIGS = {"aot-on": {"VLLM_USE_AOT_COMPILE": "1"}, "contrail": {}}
LOAD_FAILURE = "Compiling model again due to a load failure"

# A start, then the decode rate that start gives: one wave of real few-shot pair requests to warm
# up (first shapes), then the same wave timed.
CHILD = """
import json, sys, time
start = time.perf_counter()
from contrail.worker.engine.vllm_pair import VllmPairEngine
from contrail.worker.models import resolve_model
spec = resolve_model(sys.argv[1], None)
engine = VllmPairEngine(str(spec.path), spec.name)
seconds = round(time.perf_counter() - start, 1)
sys.path.insert(0, sys.argv[2])
from benchlib import bench_requests
requests = bench_requests(int(sys.argv[3]), model_name=spec.name)
engine.generate(requests)
t = time.perf_counter()
results = engine.generate(requests)
wave_s = time.perf_counter() - t
tokens = sum(r.completion_tokens for r in results)
print("RESULT " + json.dumps({
    "seconds": seconds,
    "decode": {
        "rationales": len(results),
        "completion_tokens": tokens,
        "wave_s": round(wave_s, 3),
        "rationales_per_s": round(len(results) / wave_s, 3),
        "tokens_per_s": round(tokens / wave_s, 2),
    },
}), flush=True)
"""


def start_once(model: str, env: dict[str, str], items: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, model, str(BENCH_DIR), str(items)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    log = done.stdout + done.stderr
    result = next(
        (json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")),
        {"seconds": None},
    )
    return result | {
        "returncode": done.returncode,
        "cache_load_failure": LOAD_FAILURE in log,
        "loaded_aot": "Directly load AOT compilation" in log,
        "tail": log[-600:] if done.returncode else "",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--items", type=int, default=8, help="dev items per task in the timed wave (default 8)"
    )
    args = ap.parse_args()
    for task in TASK_FILES:  # stop before any start when the research data is not beside us
        load_task_items(task, args.items)
    out = args.out or OUT_DIR / f"cold_start_{args.model}.json"
    loadavg_before = list(os.getloadavg())
    runs: dict[str, Any] = {}
    for name, extra in CONFIGS.items():
        with tempfile.TemporaryDirectory(prefix=f"cold-{name}-") as cache:
            env = {**os.environ, "VLLM_CACHE_ROOT": cache, **extra}
            first = start_once(args.model, env, args.items)
            print(f"{name:9s} first start  {first['seconds']} s {first.get('decode')}", flush=True)
            again = start_once(args.model, env, args.items)
            print(
                f"{name:9s} second start {again['seconds']} s"
                f" (cache load failure: {again['cache_load_failure']}) {again.get('decode')}",
                flush=True,
            )
            runs[name] = {"env": extra, "first": first, "second": again}
    payload = {
        "benchmark": "worker engine cold start",
        "model": args.model,
        "decode_wave": f"{args.items} StrategyQA + {args.items} CommonsenseQA dev items, "
        "contrastive-wrong, 6-shot, max_new_tokens 64, timed after one warm-up wave",
        "machine": machine()
        | {"loadavg_before": loadavg_before, "loadavg_after": list(os.getloadavg())},
        "versions": versions(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs,
    }
    write_json(out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
