"""An engine with no model: it takes as long as a given GPU would, and writes placeholder text.

It exists for fleet-scale measurements of everything around the engine (bench/scale.py): the
queue, object storage, the API and the finalizers, with as many workers as a machine holds
processes, where a real model would need one GPU each. Nothing it writes is a rationale.

How long a wave takes comes from a `GpuProfile`: the seconds of one decoding step by the number
of sequences in the batch (a contrastive pair is two), and a prefill rate. A wave is scheduled
the way vLLM's continuous batching does it: at most `max_rows` sequences decode together, and a
finished sequence's place goes to the next request at once (with its prefill). The schedule is
computed from the requests' lengths in one pass (O(n log n)); the engine then sleeps for it,
ticking the watchdog's step counter as simulated steps pass.

The default profile, `h100-llama3-8b` is an assumption, not a measurement (no GPU was
available to measure one): a roofline for Llama-3-8B in bf16 on one H100 SXM under vLLM.
- A step reads the weights (16.06 GB) and each sequence's KV cache (131,072 bytes a token:
  32 layers x 8 KV heads x 128 x K,V x 2 bytes; 660 tokens of context on average) at 80% of
  3.35 TB/s, or does 2 x 8.03e9 FLOPs a token at 50% of 989 TFLOP/s, whichever is longer,
  plus 2 ms of scheduling and sampling per step.
- Prefill runs at the compute bound, 30,790 tokens/s, on the part of a prompt not already in
  the prefix cache; 90% of a few-shot prompt is (its demonstrations are shared by the whole job,
  and a pair's two prompts differ only in the answer).
Published vLLM throughput for this model and GPU (10-25k output tokens/s at high concurrency)
brackets the table's 10.6k-20.9k. A measured table replaces it through
CONTRAIL_ENGINE_OPTIONS, e.g. {"profile": {"name": "...", "decode_step_s": [[1, 0.008], ...]}}.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from contrail.client.types import FinishReason
from contrail.worker.engine.base import DecodeRequest, DecodeResult, Engine, EngineStats
from contrail.worker.engine.progress import STEPS

CHARS_PER_TOKEN = 4  # prompt length in tokens, roughly, for a model this engine does not have
_WORDS = (
    "the",
    "a",
    "simulated",
    "rationale",
    "says",
    "that",
    "this",
    "answer",
    "follows",
    "from",
    "what",
    "is",
    "known",
    "about",
    "it",
    "because",
    "each",
    "part",
    "of",
    "the",
    "question",
    "points",
    "one",
    "way",
    "and",
    "nothing",
    "points",
    "the",
    "other",
    "so",
    "the",
    "statement",
    "holds",
    "as",
    "given",
    "here",
)


@dataclass(frozen=True)
class GpuProfile:
    """How long one GPU takes: seconds per decoding step by batch rows, linearly interpolated
    between the given points (and extrapolated from the last two), and a prefill rate."""

    name: str
    decode_step_s: tuple[tuple[int, float], ...]
    prefill_tokens_per_s: float
    prefix_cached_fraction: float = 0.9
    max_rows: int = 256  # vLLM's default max_num_seqs

    def __post_init__(self) -> None:
        rows = [r for r, _ in self.decode_step_s]
        if not rows or rows != sorted(set(rows)) or rows[0] < 1:
            raise ValueError("decode_step_s needs increasing batch sizes from 1 up")
        if any(s <= 0 for _, s in self.decode_step_s) or self.prefill_tokens_per_s <= 0:
            raise ValueError("step times and the prefill rate must be positive")
        if not 0 <= self.prefix_cached_fraction < 1 or self.max_rows < 2:
            raise ValueError("prefix_cached_fraction in [0, 1) and max_rows >= 2")

    def step_s(self, rows: int) -> float:
        points = self.decode_step_s
        if rows <= points[0][0] or len(points) == 1:
            return points[0][1]
        for (r0, s0), (r1, s1) in itertools.pairwise(points):
            if rows <= r1:
                return s0 + (s1 - s0) * (rows - r0) / (r1 - r0)
        (r0, s0), (r1, s1) = points[-2], points[-1]
        return s1 + (s1 - s0) * (rows - r1) / (r1 - r0)

    def prefill_s(self, prompt_tokens: int) -> float:
        return prompt_tokens * (1 - self.prefix_cached_fraction) / self.prefill_tokens_per_s

    @classmethod
    def from_options(cls, value: object) -> GpuProfile:
        if value is None or value == H100_LLAMA3_8B.name:
            return H100_LLAMA3_8B
        if not isinstance(value, dict):
            raise ValueError(f"unknown GPU profile {value!r}")
        fields: dict[str, Any] = dict(value)
        fields["decode_step_s"] = tuple((int(r), float(s)) for r, s in fields["decode_step_s"])
        return cls(**fields)


# The roofline of the module docstring, at the batch sizes vLLM sees most.
H100_LLAMA3_8B = GpuProfile(
    name="h100-llama3-8b",
    decode_step_s=(
        (1, 0.00802),
        (32, 0.00903),
        (64, 0.01006),
        (128, 0.01212),
        (256, 0.01626),
        (512, 0.02452),
    ),
    prefill_tokens_per_s=30_790.0,
)


@dataclass
class _Row:
    index: int
    rows: int  # 2 for a contrastive pair, 1 for greedy
    tokens: int
    prompt_tokens: int


class SimulatedEngine(Engine):
    """Decodes nothing: sleeps as long as the profile's GPU would take for each wave."""

    def __init__(
        self,
        model_name: str,
        *,
        profile: object = None,
        rationale_tokens: int = 48,
        max_model_len: int = 8192,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rationale_tokens < 1:
            raise ValueError("rationale_tokens must be >= 1")
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.max_prompt_chars = max_model_len * CHARS_PER_TOKEN
        self.profile = GpuProfile.from_options(profile)
        self.rationale_tokens = rationale_tokens
        self.stats = EngineStats()
        self._sleep = sleep
        self._clock = clock
        self.simulated_seconds = 0.0

    def generate(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        rows = [self._row(i, r) for i, r in enumerate(requests)]
        seconds, steps = self.schedule(rows)
        self._wait(seconds, steps)
        self.simulated_seconds += seconds
        results = [self._result(requests[row.index], row) for row in rows]
        self.stats.waves += 1
        self.stats.requests += len(results)
        self.stats.prompt_tokens += sum(r.prompt_tokens for r in results)
        self.stats.completion_tokens += sum(r.completion_tokens for r in results)
        return results

    def schedule(self, rows: Sequence[_Row]) -> tuple[float, int]:
        """Seconds and decoding steps for the wave under continuous batching."""
        queue = sorted(rows, key=lambda r: r.index)
        seconds, steps, active_rows = 0.0, 0, 0
        finishing: list[tuple[int, int]] = []  # (step it finishes at, rows it frees)
        waiting = iter(queue)
        pending = next(waiting, None)
        while pending is not None or finishing:
            while pending is not None and active_rows + pending.rows <= self.profile.max_rows:
                seconds += self.profile.prefill_s(pending.prompt_tokens)
                heapq.heappush(finishing, (steps + pending.tokens, pending.rows))
                active_rows += pending.rows
                pending = next(waiting, None)
            until = finishing[0][0]
            seconds += (until - steps) * self.profile.step_s(active_rows)
            steps = until
            while finishing and finishing[0][0] == steps:
                active_rows -= heapq.heappop(finishing)[1]
        return seconds, steps

    def _row(self, index: int, request: DecodeRequest) -> _Row:
        budget = request.settings.max_new_tokens
        chars = len(request.pos_prompt) + len(request.neg_prompt or "")
        return _Row(
            index=index,
            rows=2 if request.contrastive else 1,
            tokens=max(1, min(budget, self._length(request.request_id))) if budget > 0 else 0,
            prompt_tokens=chars // CHARS_PER_TOKEN,
        )

    def _length(self, request_id: str) -> int:
        """Between half and one and a half times rationale_tokens, fixed by the request id."""
        u = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=4).digest()) / 2**32
        return max(1, round(self.rationale_tokens * (0.5 + u)))

    def _wait(self, seconds: float, steps: int) -> None:
        """Sleep in slices, ticking the step counter so the watchdog sees progress."""
        deadline = self._clock() + seconds
        while (left := deadline - self._clock()) > 0:
            self._sleep(min(left, 0.25))
            STEPS.tick()
        if steps:
            STEPS.tick()

    def _result(self, request: DecodeRequest, row: _Row) -> DecodeResult:
        offset = int.from_bytes(
            hashlib.blake2b(request.request_id.encode(), digest_size=2).digest()
        )
        words = [_WORDS[(offset + k) % len(_WORDS)] for k in range(row.tokens)]
        budget = request.settings.max_new_tokens
        return DecodeResult(
            request_id=request.request_id,
            token_ids=[(offset + k) % 50_000 for k in range(row.tokens)],
            text=" ".join(words),
            finish_reason=FinishReason.LENGTH if row.tokens >= budget else FinishReason.STOP,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.tokens,
        )
