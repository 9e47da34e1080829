"""How long a vLLM worker engine takes to start, the first time on a machine and again (issue 22).

For each configuration, with a compile cache of its own (VLLM_CACHE_ROOT in a fresh folder), the
engine is started twice, each time in a new process, as a new worker would be: the first start
compiles, the second should find the compiled model in the cache. Each start builds the product's
`VllmPairEngine` with its default options (torch.compile on) and times it to the end of its
self-check; the child's log says whether vLLM loaded the cached compilation or gave up on it
("Compiling model again due to a load failure").

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

from benchlib import OUT_DIR, machine, versions, write_json

CONFIGS = {"aot-on": {"VLLM_USE_AOT_COMPILE": "1"}, "contrail": {}}
LOAD_FAILURE = "Compiling model again due to a load failure"

CHILD = """
import json, sys, time
start = time.perf_counter()
from contrail.worker.engine.vllm_pair import VllmPairEngine
from contrail.worker.models import resolve_model
spec = resolve_model(sys.argv[1], None)
engine = VllmPairEngine(str(spec.path), spec.name)
print("RESULT " + json.dumps({"seconds": round(time.perf_counter() - start, 1)}), flush=True)
"""


def start_once(model: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, model],
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
    args = ap.parse_args()
    out = args.out or OUT_DIR / f"cold_start_{args.model}.json"
    loadavg_before = list(os.getloadavg())
    runs: dict[str, Any] = {}
    for name, extra in CONFIGS.items():
        with tempfile.TemporaryDirectory(prefix=f"cold-{name}-") as cache:
            env = {**os.environ, "VLLM_CACHE_ROOT": cache, **extra}
            first = start_once(args.model, env)
            print(f"{name:9s} first start  {first['seconds']} s", flush=True)
            again = start_once(args.model, env)
            print(
                f"{name:9s} second start {again['seconds']} s"
                f" (cache load failure: {again['cache_load_failure']})",
                flush=True,
            )
            runs[name] = {"env": extra, "first": first, "second": again}
    payload = {
        "benchmark": "worker engine cold start",
        "model": args.model,
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
