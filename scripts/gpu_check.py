"""The prepared engine check for a host with vLLM, GPU or not: one command, one results file.

    .venv/bin/python scripts/gpu_check.py                      # SmolLM2-135M, runner v1
    .venv/bin/python scripts/gpu_check.py --runner v2          # the V2 pair processor
    .venv/bin/python scripts/gpu_check.py --model tiny --pairs 12 --out /tmp/check.json

Checks, in order (each a line of output and an entry of the results file; docs/DECODING.md,
"Checking a GPU host", says what each means):

1. `startup`       the engine starts: runner, async scheduling, real KV block size, dtype and
                   the attention backend in force, and the start-up self-check passed;
2. `refuses_v2`    negative control: VLLM_USE_V2_MODEL_RUNNER=1 with runner v1 is refused
                   before a model is loaded;
3. `equal_fp32`    the pair engine against the reference engine (transformers), fp32, on real
                   few-shot prompts: identical, or parted only at near-ties;
4. `desync`        a 64-token step budget and a KV cache of 1.2 contexts make pairs lose
                   lockstep; every pair must still finish and match the reference;
5. `bf16_reorder`  (CUDA) bf16 with FlashInfer, whose batch reordering sends SWAP moves: counts
                   them (V1), checks every pair finished in lockstep and equals the bf16
                   reference up to near-ties;
6. `step_time`     per-step wall time of 128 pairs (256 rows) against 256 greedy rows.

On a machine without CUDA, check 5 is reported as skipped with the reason; everything else runs
(the suite runs it on the tiny model: tests/test_gpu_check.py). Exit status 0 when no check
failed. Prompts are the committed demonstration pools (contrail/core/data), so the check needs
nothing beside the checkout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from provenance import git_sha  # noqa: E402

# Pool questions as prompts: any fluent text serves an engine check.
TASKS = ("strategyqa", "creak", "csqa")


@dataclasses.dataclass
class Check:
    name: str
    status: str = "pass"  # pass | fail | skipped
    seconds: float = 0.0
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


def _requests(n: int, max_new_tokens: int, greedy: bool = False) -> list[Any]:
    """n decode requests from the committed pools, 0, 2 or 6 demonstrations in turn."""
    from importlib import resources

    from contrail.client.types import DecodingMode, DecodingSettings, Item, TaskName
    from contrail.worker.generation import pipeline

    requests: list[Any] = []
    mode = DecodingMode.GREEDY if greedy else DecodingMode.CONTRASTIVE
    rounds = 0
    while len(requests) < n:
        for task in TASKS:
            text = resources.files("contrail.core").joinpath("data", f"{task}.jsonl").read_text()
            items = [Item.model_validate(json.loads(line)) for line in text.splitlines()]
            items = [i.model_copy(update={"id": f"{i.id}~{rounds}"}) for i in items]
            shots = (0, 2, 6)[rounds % 3]
            settings = DecodingSettings(
                mode=mode, max_new_tokens=max_new_tokens, num_demonstrations=shots
            )
            requests += pipeline.plan(items, TaskName(task), settings, "check").decode_requests
        rounds += 1
    return requests[:n]


class GpuCheck:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from contrail.worker.models import resolve_model

        self.args = args
        self.cuda = torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        self.model_path = str(resolve_model(args.model, None).path)
        self.engine: Any = None
        self.checks: list[Check] = []

    def options(self, **kw: Any) -> Any:
        from contrail.worker.engine.vllm_pair import VllmOptions

        base: dict[str, Any] = {"runner": self.args.runner, "dtype": "float32"}
        if not self.cuda:
            base |= {"kv_cache_bytes": 256 * 1024**2, "enforce_eager": True}
        else:
            # Engines live until the process exits, and each must find its share free at start:
            # a third of the GPU each leaves room for the three this check builds.
            base["extra"] = {"gpu_memory_utilization": 0.3}
        extra = {**base.get("extra", {}), **kw.pop("extra", {})}
        return VllmOptions(**(base | kw | {"extra": extra}))

    def kv_bytes_per_token(self, dtype_bytes: int = 4) -> int:
        """K and V of every layer for one token, from the model's config."""
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(self.model_path)
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return 2 * c.num_hidden_layers * heads * head_dim * dtype_bytes

    def reference(self, dtype: str = "float32") -> Any:
        from contrail.worker.engine.reference import ReferenceEngine

        return ReferenceEngine(self.model_path, dtype=dtype, device=self.device, max_batch=32)

    def run(
        self,
        name: str,
        fn: Callable[[Check], None],
        needs_cuda: bool = False,
        needs_engine: bool = False,
    ) -> None:
        check = Check(name)
        start = time.perf_counter()
        if needs_cuda and not self.cuda:
            check.status = "skipped"
            check.detail["reason"] = "needs a CUDA GPU (FlashInfer and its batch reordering)"
        elif needs_engine and self.engine is None:
            check.status = "skipped"
            check.detail["reason"] = "the engine did not start (see startup)"
        else:
            try:
                fn(check)
            except Exception as exc:  # a failed check is a result, not the end of the run
                check.status = "fail"
                check.detail["error"] = f"{type(exc).__name__}: {exc}"
                check.detail["traceback"] = traceback.format_exc(limit=6)
        check.seconds = round(time.perf_counter() - start, 2)
        self.checks.append(check)
        print(f"{check.status:7s} {name:13s} {check.seconds:7.1f} s  {_short(check.detail)}")

    # -- the checks ---------------------------------------------------------------------------

    def startup(self, check: Check) -> None:
        from contrail.worker.engine.vllm_pair import VllmPairEngine

        self.engine = VllmPairEngine(self.model_path, options=self.options())
        config = self.engine.llm.llm_engine.vllm_config
        check.detail |= {
            "use_v2_model_runner": bool(config.use_v2_model_runner),
            "async_scheduling": bool(config.scheduler_config.async_scheduling),
            "block_size_asked": self.engine.options.block_size,
            "block_size_in_force": int(config.cache_config.block_size),
            "dtype": str(config.model_config.dtype),
            "attention_backend": str(config.attention_config.backend),
            "self_check": "passed",
        }

    def refuses_v2(self, check: Check) -> None:
        from contrail.worker.engine.vllm_pair import EngineMisconfigured, VllmPairEngine

        saved = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
        # "true", a value the engine never writes itself: an operator's setting.
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "true"
        try:
            VllmPairEngine(self.model_path, options=self.options(runner="v1"))
        except EngineMisconfigured as exc:
            check.detail["refused"] = str(exc)
        else:
            check.status = "fail"
            check.detail["error"] = "an engine started with Model Runner V2 forced"
        finally:
            if saved is None:
                os.environ.pop("VLLM_USE_V2_MODEL_RUNNER", None)
            else:
                os.environ["VLLM_USE_V2_MODEL_RUNNER"] = saved

    def _compare(self, check: Check, ours: list[Any], requests: list[Any], ref: Any) -> None:
        """Identical, or parted only at near-ties under the reference model."""
        from contrail.worker.engine.agreement import first_divergence

        theirs = ref.generate(requests)
        identical, agreed, far = 0, 0, []
        for request, a, b in zip(requests, ours, theirs, strict=True):
            found = first_divergence(ref.model, ref.tokenizer, request, a.token_ids, b.token_ids)
            identical += found is None
            agreed += len(a.token_ids) if found is None else found.step
            if found is not None and not found.near_tie:
                far.append(dataclasses.asdict(found))
        errors = [r.error for r in ours if r.error]
        check.detail |= {
            "pairs": len(requests),
            "identical": identical,
            "tokens_agreed": agreed,
            "not_near_ties": far,
            "errors": errors,
        }
        if far or errors:
            check.status = "fail"

    def equal_fp32(self, check: Check) -> None:
        requests = _requests(self.args.pairs, self.args.max_new_tokens)
        ours = self.engine.generate(requests)
        self._compare(check, ours, requests, self.reference())

    def desync(self, check: Check) -> None:
        from contrail.worker.engine.vllm_pair import VllmPairEngine

        # A KV cache of about 1.2 contexts (4 MiB on the tiny model) and a 64-token step budget:
        # members are preempted and prefills split, so pairs lose lockstep.
        engine = VllmPairEngine(
            self.model_path,
            options=self.options(
                kv_cache_bytes=max(4 * 1024**2, 1228 * self.kv_bytes_per_token()),
                max_num_batched_tokens=64,
                max_num_seqs=64,
                max_model_len=1024,
                max_attempts=8,
            ),
        )
        requests = _requests(self.args.pairs, 24)
        ours = engine.generate(requests)
        check.detail |= {
            "pairs_continued": engine.stats.pairs_continued,
            "extra_tokens": engine.stats.extra_tokens,
            "lockstep_failures": engine.stats.lockstep_failures,
        }
        self._compare(check, ours, requests, self.reference())
        if engine.stats.pairs_continued == 0:
            check.status = "fail"
            check.detail["error"] = "no pair lost lockstep: the stress did not stress"

    def bf16_reorder(self, check: Check) -> None:
        from contrail.worker.engine.pair_processor import ContrastivePairLogitsProcessor
        from contrail.worker.engine.vllm_pair import VllmPairEngine

        swaps = _count_swaps(ContrastivePairLogitsProcessor)
        extra: dict[str, Any] = {"attention_config": {"backend": "FLASHINFER"}}
        if self.args.runner == "v1":
            extra["logits_processors"] = [swaps]
        engine = VllmPairEngine(
            self.model_path, options=self.options(dtype="bfloat16", extra=extra)
        )
        requests = _requests(self.args.pairs, self.args.max_new_tokens)
        ours = engine.generate(requests)
        check.detail |= {
            "swap_moves": swaps.swaps if self.args.runner == "v1" else None,
            "lockstep_failures": engine.stats.lockstep_failures,
            "pairs_continued": engine.stats.pairs_continued,
        }
        self._compare(check, ours, requests, self.reference("bfloat16"))
        if engine.stats.lockstep_failures:
            check.status = "fail"

    def step_time(self, check: Check) -> None:
        from contrail.worker.engine.progress import STEPS

        timings: dict[str, dict[str, float]] = {}
        for label, requests in (
            ("pairs_128", _requests(128, 32)),
            ("greedy_256", _requests(256, 32, greedy=True)),
        ):
            self.engine.generate(requests[:8])  # warm
            steps = STEPS.steps
            start = time.perf_counter()
            self.engine.generate(requests)
            seconds = time.perf_counter() - start
            n = STEPS.steps - steps
            timings[label] = {
                "seconds": round(seconds, 3),
                "steps": n,
                "ms_per_step": round(1000 * seconds / max(n, 1), 3),
            }
        ratio = timings["pairs_128"]["ms_per_step"] / timings["greedy_256"]["ms_per_step"]
        check.detail |= timings | {"pair_over_greedy_step": round(ratio, 3)}


def _count_swaps(base: type) -> Any:
    """A V1 pair processor that also counts the SWAP moves vLLM hands it."""
    from vllm.v1.sample.logits_processor import MoveDirectionality

    class Counting(base):  # type: ignore[misc, valid-type]
        swaps = 0

        def update_state(self, batch_update: Any) -> None:
            if batch_update is not None:
                moved = batch_update.moved
                Counting.swaps += sum(d == MoveDirectionality.SWAP for _, _, d in moved)
            super().update_state(batch_update)

    return Counting


def _short(detail: dict[str, Any]) -> str:
    shown = {k: v for k, v in detail.items() if k not in ("traceback", "not_near_ties")}
    return json.dumps(shown, default=str)[:240]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="a contrail model name or folder")
    ap.add_argument("--runner", choices=("v1", "v2"), default="v1")
    ap.add_argument("--pairs", type=int, default=32, help="pairs per equality check")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    check = GpuCheck(args)
    check.run("startup", check.startup)
    check.run("refuses_v2", check.refuses_v2)
    check.run("equal_fp32", check.equal_fp32, needs_engine=True)
    check.run("desync", check.desync, needs_engine=True)
    check.run("bf16_reorder", check.bf16_reorder, needs_cuda=True, needs_engine=True)
    check.run("step_time", check.step_time, needs_engine=True)
    result = _result(check)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    failed = [c.name for c in check.checks if c.status == "fail"]
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'} -> {args.out}")
    return 1 if failed else 0


def _result(check: GpuCheck) -> dict[str, Any]:
    import torch
    import vllm

    gpu = torch.cuda.get_device_name(0) if check.cuda else None
    return {
        "check": "gpu_check",
        "provenance": git_sha(),
        "machine": {"platform": platform.platform(), "gpu": gpu, "cpus": os.cpu_count()},
        "versions": {"vllm": vllm.__version__, "torch": torch.__version__},
        "settings": {k: str(v) for k, v in vars(check.args).items()},
        "checks": [dataclasses.asdict(c) for c in check.checks],
    }


if __name__ == "__main__":
    sys.exit(main())
