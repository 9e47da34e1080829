"""Fleet sizing figures derived by arithmetic from the fleet-scale results (bench/scale.py), for
docs/OPERATIONS.md ("Sizing a fleet").

Nothing is measured here: every figure is a formula over named fields of `--scale` (a phase is
named by its `phase` field: `sweep1` ... `sweep32`, `big`), under the assumptions written beside
them (the headroom left on a core, the teacher's speed-up). Each figure records its exact value
and `about`, the value at two significant figures, for prose that quotes it roughly. Rerun after
bench/scale.py, at a clean commit, so that the provenance says the code was committed.

    .venv/bin/python bench/sizing.py [--scale docs/bench/scale.json] [--out docs/bench/sizing.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_sha

REPO = Path(__file__).resolve().parent.parent

HEADROOM_CORES = 0.5  # the share of one core a component may use before it gets another
TEACHER_SPEEDUP = 4.0  # a teacher this many times faster per rationale than the profile's


def about(value: float) -> int | float:
    """`value` at two significant figures."""
    if value == 0:
        return 0
    digits = 1 - math.floor(math.log10(abs(value)))
    return int(round(value, digits)) if digits <= 0 else round(value, digits)


def phase(scale: dict[str, Any], name: str) -> dict[str, Any]:
    """The sweep phase or big job whose `phase` field is `name`."""
    phases: list[dict[str, Any]] = [*scale["sweep"], scale["big_job"]]
    for p in phases:
        if p["phase"] == name:
            return p
    raise SystemExit(f"no phase {name!r} in the scale results")


def figure(value: float, formula: str, digits: int = 4) -> dict[str, Any]:
    return {"value": round(value, digits), "about": about(value), "formula": formula}


def sizing(scale: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(assumptions, figures) from the scale results."""
    one, s32, big = phase(scale, "sweep1"), phase(scale, "sweep32"), phase(scale, "big")
    big_job = max(big["jobs"], key=lambda j: j["items"])  # the 1M-item job; the others are small
    per_worker = one["ideal_rationales_per_s"] / one["workers"]
    assumptions = {
        "headroom_cores": {
            "value": HEADROOM_CORES,
            "meaning": "share of one core a component may use (half a core)",
        },
        "rationales_per_s_per_worker": {
            "value": per_worker,
            "meaning": "the GPU profile's engine-bound rate of one worker: "
            "sweep1.ideal_rationales_per_s / sweep1.workers",
        },
        "teacher_speedup": {
            "value": TEACHER_SPEEDUP,
            "meaning": "a teacher this many times faster per rationale than the profile",
        },
    }

    def cpu_s_per_rationale(p: dict[str, Any], process: str) -> float:
        cpu: float = p["cpu_seconds"][process] / p["rationales"]
        return cpu

    valkey = cpu_s_per_rationale(s32, "valkey")
    finalizer = cpu_s_per_rationale(s32, "finalizers")
    figures = {
        "redis_workers_per_headroom": figure(
            HEADROOM_CORES / (valkey * per_worker),
            "headroom_cores / (sweep32.cpu_seconds.valkey / sweep32.rationales"
            " * rationales_per_s_per_worker): workers one Valkey serves at half a core",
            1,
        ),
        "redis_commands_per_item": figure(
            s32["redis_commands"] / s32["items"],
            "sweep32.redis_commands / sweep32.items",
        ),
        "finalizer_workers_per_headroom": figure(
            HEADROOM_CORES / (finalizer * per_worker),
            "headroom_cores / (sweep32.cpu_seconds.finalizers / sweep32.rationales"
            " * rationales_per_s_per_worker): workers one finalizer core keeps up with at half"
            " load",
            1,
        ),
        "big_merge_rationales_per_s": figure(
            big_job["rationales"] / big_job["merge_seconds"],
            "big.jobs[largest].rationales / big.jobs[largest].merge_seconds: the merge rate of"
            " one job, in one process",
            1,
        ),
        "big_job_shards": figure(
            math.ceil(big_job["items"] / scale["settings"]["shard_size"]),
            "ceil(big.jobs[largest].items / settings.shard_size)",
            0,
        ),
        "faster_teacher_overhead": figure(
            TEACHER_SPEEDUP * s32["overhead_vs_engine_worker_cpu"],
            "teacher_speedup * sweep32.overhead_vs_engine_worker_cpu: coordination is CPU per"
            " rationale, so its share of GPU time grows as GPU time per rationale shrinks",
        ),
    }
    return assumptions, figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=Path, default=REPO / "docs" / "bench" / "scale.json")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "sizing.json")
    args = ap.parse_args()
    raw = args.scale.read_bytes()
    scale: dict[str, Any] = json.loads(raw)
    assumptions, figures = sizing(scale)
    path = args.scale.resolve()
    payload = {
        "what": "fleet sizing figures derived by arithmetic from bench/scale.py's results "
        "(docs/OPERATIONS.md, 'Sizing a fleet'); `about` is `value` at two significant figures",
        "provenance": git_sha(),
        "input": {
            "path": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "provenance": scale.get("provenance"),
        },
        "assumptions": assumptions,
        "figures": figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    for name, f in figures.items():
        print(f"{name}: {f['value']} (about {f['about']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
