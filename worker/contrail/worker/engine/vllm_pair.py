"""The production engine: vLLM with each (C+, C-) pair decoded as two requests in one batch.

Greedy requests are plain vLLM greedy generation. Contrastive requests go through
`ContrastivePairLogitsProcessor`; after each wave the driver checks every pair's outputs (tokens
and the VALID/ABORT codes the processor wrote) and continues pairs that lost lockstep from their
agreed prefix, in smaller waves, a bounded number of times. A pair that still fails is a
per-request error (`lockstep_exhausted`), never a hang.

Admission keeps desync rare: a wave holds at most max_num_seqs / 2 pairs and only as many as the
KV cache can hold at once (shared prompt prefixes counted once), so members are not preempted.

GPU path: `runner` picks the model runner and the processor written for it. "v1" (the default)
is the runner the CPU build runs and the suite tests token for token; vLLM's GPU builds default to
Model Runner V2, which rejects V1 processors, so the engine sets VLLM_USE_V2_MODEL_RUNNER=0. "v2"
uses `ContrastivePairLogitsProcessorV2` under Model Runner V2 (which needs Triton, so GPU only).
Async scheduling stays off on both (docs/DECODING.md).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from contrail.client.types import FinishReason
from contrail.worker.engine.base import (
    ContrastSettings,
    DecodeRequest,
    DecodeResult,
    Engine,
    EngineStats,
    prompt_char_bound,
)
from contrail.worker.engine.lockstep import MemberOutput, PairProgress
from contrail.worker.engine.stopping import finalize_text


@dataclass
class VllmOptions:
    """Engine knobs. The defaults suit a 2-core CPU; GPU workers raise the KV cache and batch."""

    # None: bfloat16 on a GPU (FlashAttention and FlashInfer take only 16-bit types; float32
    # falls back to slow Triton attention), float32 on CPU, the precision the suite compares
    # with the reference engine token for token. docs/DECODING.md "Precision" has the policy.
    dtype: str | None = None
    kv_cache_bytes: int = 2 * 1024**3
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    block_size: int = 32
    max_model_len: int | None = 2048
    max_attempts: int = 6
    in_process: bool = True
    enforce_eager: bool = False  # skip torch.compile: ~10 s faster start, slower decoding
    # Admission counts a full prompt block shared by members of a wave once (prefix caching).
    shared_prefix_admission: bool = True
    # "v1": Model Runner V1 and the V1 pair processor (tested token for token on the CPU build);
    # "v2": Model Runner V2 and the V2 pair processor (needs Triton, so a GPU build). One per
    # process: vLLM caches its environment once the first engine starts.
    runner: str = "v1"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Pair:
    index: int
    request: DecodeRequest
    pos_ids: list[int]
    neg_ids: list[int]
    progress: PairProgress = field(default_factory=PairProgress)
    attempts: int = 0


# In-process vLLM engines share process-wide parallel state, and collecting one tears that state
# down for every other engine in the process. They are kept here until the process exits.
_IN_PROCESS_ENGINES: list[Any] = []
_WAVE_IDS = itertools.count()


class EngineMisconfigured(RuntimeError):
    """A vLLM configuration the pair processor cannot run under: the worker refuses to serve."""


# Why each setting matters (docs/DECODING.md): the processor implements the V1 model-runner
# interface, and it reads each step's output ids, which async scheduling hands it a step late.
_V1_ONLY = (
    "the pair processor implements vLLM's V1 model-runner interface, and Model Runner V2 would "
    "refuse or bypass it"
)
_SYNC_ONLY = (
    "the pair processor reads each step's output token ids, which async scheduling delivers a "
    "step late, so the pair's two rows would be scored against stale histories"
)


_RUNNERS = ("v1", "v2")
# What this module wrote to VLLM_USE_V2_MODEL_RUNNER: in-process engines of one process share the
# environment, so an engine must tell its own earlier setting from an operator's.
_RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
_written_runner_env: str | None = None


def _refuse_unsafe_options(options: VllmOptions) -> None:
    """Refuse, before the engine is built, settings that turn on what the processor cannot run
    under (they would otherwise come in through CONTRAIL_ENGINE_OPTIONS `extra` or the
    environment)."""
    if options.runner not in _RUNNERS:
        raise EngineMisconfigured(f"engine option runner={options.runner!r}: use 'v1' or 'v2'")
    if options.extra.get("async_scheduling"):
        raise EngineMisconfigured(
            f"engine options turn async_scheduling on: {_SYNC_ONLY}; remove it from "
            "CONTRAIL_ENGINE_OPTIONS extra"
        )
    if options.extra.get("enable_batch_sharded_sampling"):
        raise EngineMisconfigured(
            "engine options turn batch-sharded sampling on: the two rows of a pair could be "
            "sampled on different ranks, where neither sees its partner; remove it"
        )
    if options.extra.get("speculative_config"):
        raise EngineMisconfigured(
            "engine options turn speculative decoding on: the pair processor decides one token "
            "per pair and step from one logits row per request; remove speculative_config"
        )
    raw = os.environ.get(_RUNNER_ENV)
    forced = (raw or "").strip().lower()
    if options.runner == "v1" and raw != _written_runner_env and forced in ("1", "true", "yes"):
        raise EngineMisconfigured(
            f"{_RUNNER_ENV}={forced} forces Model Runner V2: {_V1_ONLY}; unset it, or set the "
            "engine option runner='v2' (GPU builds)"
        )
    if options.runner == "v2":
        from vllm.triton_utils import HAS_TRITON

        if not HAS_TRITON:
            raise EngineMisconfigured(
                "engine option runner='v2': vLLM's Model Runner V2 runs Triton kernels and this "
                "vLLM build has no Triton (the CPU build's triton-cpu is not published); use "
                "runner='v1'"
            )


def check_config_in_force(config: Any, runner: str = "v1") -> None:
    """Assert, once `LLM()` is built, the configuration the engine really runs with: the model
    runner its processor was written for, synchronous scheduling and no speculative decoding (a
    platform or another option may change any of them)."""
    v2 = bool(getattr(config, "use_v2_model_runner", False))
    if v2 and runner == "v1":
        raise EngineMisconfigured(f"vLLM chose Model Runner V2: {_V1_ONLY}")
    if not v2 and runner == "v2":
        raise EngineMisconfigured(
            "engine option runner='v2', but vLLM chose Model Runner V1, which would not call "
            "the V2 pair processor; use runner='v1'"
        )
    if bool(getattr(config.scheduler_config, "async_scheduling", False)):
        raise EngineMisconfigured(f"vLLM runs with async scheduling: {_SYNC_ONLY}")
    if getattr(getattr(config, "parallel_config", None), "enable_batch_sharded_sampling", False):
        raise EngineMisconfigured(
            "vLLM samples with batch sharding: the two rows of a pair could land on different ranks"
        )
    if getattr(config, "speculative_config", None) is not None:
        raise EngineMisconfigured(
            "vLLM runs with speculative decoding: the pair processor needs one logits row per "
            "request"
        )


def _configure_environment(options: VllmOptions) -> None:
    global _written_runner_env
    if options.in_process:
        # The in-process engine starts in ~3 s instead of 20-30 s and adds all requests of a
        # wave before its first step.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if options.runner == "v2":
        os.environ[_RUNNER_ENV] = _written_runner_env = "1"
    elif _RUNNER_ENV not in os.environ or os.environ[_RUNNER_ENV] == _written_runner_env:
        os.environ[_RUNNER_ENV] = _written_runner_env = "0"
    # Weights come from local folders only; never let a missing folder turn into a hub download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # vLLM 0.32 with torch 2.13 saves AOT-compiled models it cannot load back ("'function' object
    # has no attribute 'finalize_loading'"), so every restart recompiled from scratch. Without AOT
    # compilation vLLM traces again and takes the compiled graphs from its inductor cache, and the
    # first start is faster too (docs/bench/PERFORMANCE.md, "Worker cold start").
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")


def default_dtype() -> str:
    """The engine's dtype when the options name none: bfloat16 on GPUs, float32 elsewhere."""
    from vllm.platforms import current_platform

    return "bfloat16" if current_platform.is_cuda_alike() else "float32"


def _processor_for(runner: str) -> type:
    if runner == "v2":
        from contrail.worker.engine.pair_processor_v2 import ContrastivePairLogitsProcessorV2

        return ContrastivePairLogitsProcessorV2
    from contrail.worker.engine.pair_processor import ContrastivePairLogitsProcessor

    return ContrastivePairLogitsProcessor


class VllmPairEngine(Engine):
    def __init__(
        self, model_path: str, model_name: str | None = None, options: VllmOptions | None = None
    ) -> None:
        self.options = options or VllmOptions()
        _refuse_unsafe_options(self.options)
        _configure_environment(self.options)
        from vllm import LLM

        processor = _processor_for(self.options.runner)
        model_path = os.path.abspath(model_path)
        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"model folder not found: {model_path}")
        kwargs: dict[str, Any] = {
            "model": model_path,
            "dtype": self.options.dtype or default_dtype(),
            "kv_cache_memory_bytes": self.options.kv_cache_bytes,
            "max_num_seqs": self.options.max_num_seqs,
            "block_size": self.options.block_size,
            "enable_prefix_caching": True,
            "logits_processors": [processor],
            # The processor's VALID/ABORT code comes back as the sampled token's "logprob".
            "logprobs_mode": "processed_logits",
            "async_scheduling": False,
            "enforce_eager": self.options.enforce_eager,
            "seed": 0,
            **self.options.extra,
        }
        if self.options.max_model_len is not None:
            kwargs["max_model_len"] = self.options.max_model_len
        if self.options.max_num_batched_tokens is not None:
            kwargs["max_num_batched_tokens"] = self.options.max_num_batched_tokens
        self.llm = LLM(**kwargs)
        if self.options.in_process:
            _IN_PROCESS_ENGINES.append(self.llm)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_name = model_name or os.path.basename(model_path.rstrip("/"))
        config = self.llm.llm_engine.vllm_config
        self.max_model_len = int(config.model_config.max_model_len)
        self.max_prompt_chars = prompt_char_bound(self.tokenizer.get_vocab(), self.max_model_len)
        check_config_in_force(config, self.options.runner)
        cache = config.cache_config
        # Admission counts KV blocks of the cache's real size: a backend may choose another
        # block size than the one asked for, and miscounting shared prefixes means preemption.
        self._block_size = int(cache.block_size)
        self._kv_tokens = int((cache.num_gpu_blocks or 0) * cache.block_size)
        self._max_batched = int(config.scheduler_config.max_num_batched_tokens)
        self._eos = self._eos_id()
        self.stats = EngineStats()
        self._self_check()
        self.stats = EngineStats()  # the check is not work

    def _self_check(self) -> None:
        """Before serving, one known pair through one wave: both members must come back with
        the same tokens, every one carrying the processor's VALID code. That holds only when
        the pair processor is attached, runs at every step, and sees the pair's two rows
        together; anything else (a processor dropped by an option, a runner that bypasses it,
        rows it cannot pair) refuses to serve here, before a tenant's job is decoded wrong."""
        settings = ContrastSettings(max_new_tokens=4, stop=())
        pos, neg = "Q: Is water wet?\nA: yes, because", "Q: Is water wet?\nA: no, because"
        request = DecodeRequest("contrail-self-check", pos, neg, settings)
        pair = _Pair(0, request, self._encode(pos), self._encode(neg))
        ((_, result),) = self._run_wave([pair])
        if result is None or result.finish_reason is FinishReason.ERROR:
            raise EngineMisconfigured(
                "self-check failed: a pair's two members did not decode in lockstep with the "
                "pair processor's VALID code, so the processor is not attached, not called at "
                "every step, or cannot pair its rows (check CONTRAIL_ENGINE_OPTIONS `extra`)"
            )

    def _eos_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the model's tokenizer has no EOS token")
        return int(eos)

    # -- public -------------------------------------------------------------------------------

    def generate(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        results: list[DecodeResult | None] = [None] * len(requests)
        greedy: list[tuple[int, DecodeRequest, list[int]]] = []
        pairs: list[_Pair] = []
        for i, req in enumerate(requests):
            pos_ids = self._encode(req.pos_prompt)
            neg_ids = self._encode(req.neg_prompt) if req.neg_prompt is not None else []
            too_long = self._too_long(req, pos_ids, neg_ids)
            if too_long is not None:
                results[i] = too_long
            elif req.neg_prompt is None:
                greedy.append((i, req, pos_ids))
            else:
                pairs.append(_Pair(index=i, request=req, pos_ids=pos_ids, neg_ids=neg_ids))
        for i, res in self._run_greedy(greedy):
            results[i] = res
        for pair, res in self._run_pairs(pairs):
            results[pair.index] = res
        self.stats.requests += len(requests)
        return [r for r in results if r is not None]

    # -- helpers ------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def _too_long(
        self, req: DecodeRequest, pos_ids: list[int], neg_ids: list[int]
    ) -> DecodeResult | None:
        longest = max(len(pos_ids), len(neg_ids))
        if longest + req.settings.max_new_tokens <= self.max_model_len:
            return None
        return DecodeResult(
            request_id=req.request_id,
            token_ids=[],
            text="",
            finish_reason=FinishReason.ERROR,
            prompt_tokens=len(pos_ids) + len(neg_ids),
            error=(
                f"prompt_too_long: the prompt has {longest} tokens and max_new_tokens is "
                f"{req.settings.max_new_tokens}, over the model context of {self.max_model_len}"
            ),
        )

    def _finish(
        self,
        request_id: str,
        settings: ContrastSettings,
        token_ids: list[int],
        prompt_tokens: int,
    ) -> DecodeResult:
        ended_by_eos = bool(token_ids) and token_ids[-1] == self._eos
        emitted = token_ids[:-1] if ended_by_eos else token_ids
        raw = self.tokenizer.decode(emitted, skip_special_tokens=True)
        text = finalize_text(raw, settings.stop)
        stopped = ended_by_eos or any(s in raw for s in settings.stop)
        reason = FinishReason.STOP if stopped else FinishReason.LENGTH
        self.stats.completion_tokens += len(emitted)
        self.stats.prompt_tokens += prompt_tokens
        return DecodeResult(
            request_id=request_id,
            token_ids=emitted,
            text=text,
            finish_reason=reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(emitted),
        )

    def _run_greedy(
        self, items: list[tuple[int, DecodeRequest, list[int]]]
    ) -> list[tuple[int, DecodeResult]]:
        if not items:
            return []
        from vllm import SamplingParams, TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=ids) for _, _, ids in items]
        params = [
            SamplingParams(
                temperature=0.0,
                max_tokens=req.settings.max_new_tokens,
                stop=list(req.settings.stop),
            )
            for _, req, _ in items
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self.stats.waves += 1
        done = []
        for (i, req, ids), out in zip(items, outputs, strict=True):
            done.append(
                (
                    i,
                    self._finish(
                        req.request_id, req.settings, list(out.outputs[0].token_ids), len(ids)
                    ),
                )
            )
        return done

    def _run_pairs(self, pairs: list[_Pair]) -> list[tuple[_Pair, DecodeResult]]:
        done: list[tuple[_Pair, DecodeResult]] = []
        pending = pairs
        for attempt in range(self.options.max_attempts):
            if not pending:
                break
            still: list[_Pair] = []
            for wave in self._waves(pending, attempt):
                for pair, result in self._run_wave(wave):
                    if result is None:
                        still.append(pair)
                    else:
                        done.append((pair, result))
            pending = still
        for pair in pending:
            self.stats.lockstep_failures += 1
            done.append((pair, self._exhausted(pair)))
        return done

    def _exhausted(self, pair: _Pair) -> DecodeResult:
        return DecodeResult(
            request_id=pair.request.request_id,
            token_ids=[],
            text="",
            finish_reason=FinishReason.ERROR,
            prompt_tokens=len(pair.pos_ids) + len(pair.neg_ids),
            continuations=pair.progress.continuations,
            extra_tokens=pair.progress.extra_tokens,
            error=(
                f"lockstep_exhausted: the pair lost lockstep {pair.attempts} times; "
                "the engine's token budget or KV cache is too small for this prompt"
            ),
        )

    def _waves(self, pairs: list[_Pair], attempt: int) -> list[list[_Pair]]:
        """Split pairs into waves that fit max_num_seqs and the KV cache; halve on each retry.

        With `shared_prefix_admission` (default) a full prompt block that several members of a
        wave share (the few-shot prefix; the question both contexts repeat) is counted once, as
        vLLM's prefix cache stores it once; otherwise every member counts its whole prompt.
        """
        max_pairs = max(1, (self.options.max_num_seqs // 2) >> attempt)
        shared = self.options.shared_prefix_admission
        waves: list[list[_Pair]] = []
        current: list[_Pair] = []
        used = 0
        seen: set[int] = set()  # full prompt blocks already counted in the current wave
        for pair in pairs:
            need, blocks = self._kv_need(pair, seen if shared else None)
            if current and (len(current) >= max_pairs or used + need > self._kv_tokens):
                waves.append(current)
                current, used, seen = [], 0, set()
                need, blocks = self._kv_need(pair, seen if shared else None)
            current.append(pair)
            used += need
            seen |= blocks
        if current:
            waves.append(current)
        return waves

    def _kv_need(self, pair: _Pair, seen: set[int] | None = None) -> tuple[int, set[int]]:
        """KV tokens a pair can occupy at its longest (both members, full rationale).

        With `seen` (block keys of full prompt blocks already counted in the wave) a full prompt
        block is counted only once; returns the need and the new block keys.
        """
        block = self._block_size
        agreed = pair.progress.agreed
        remaining = pair.request.settings.max_new_tokens - len(agreed)
        total = 0
        new: set[int] = set()
        for ids in (pair.pos_ids, pair.neg_ids):
            prompt = ids + agreed
            blocks = -(-(len(prompt) + remaining) // block)
            if seen is not None:
                key = 0
                for start in range(0, len(prompt) - block + 1, block):
                    # A block's content depends on everything before it, as in vLLM's block hash.
                    key = hash((key, tuple(prompt[start : start + block])))
                    if key in seen or key in new:
                        blocks -= 1
                    else:
                        new.add(key)
            total += blocks * block
        return total, new

    def _run_wave(self, wave: list[_Pair]) -> list[tuple[_Pair, DecodeResult | None]]:
        from vllm import SamplingParams, TokensPrompt

        from contrail.worker.engine.pair_processor import PairSpec

        prompts: list[TokensPrompt] = []
        params: list[SamplingParams] = []
        for pair in wave:
            pair.attempts += 1
            s = pair.request.settings
            # Unique in the process: a processor may remember a key after its rows left (V2
            # learns of a slot's end only when the slot is reused), and a shard can be decoded
            # again in the same process, with the same request ids and attempt numbers.
            key = f"{pair.request.request_id}#{pair.attempts}@{next(_WAVE_IDS)}"
            agreed = pair.progress.agreed
            remaining = s.max_new_tokens - len(agreed)
            for role, ids in ((0, pair.pos_ids), (1, pair.neg_ids)):
                spec = PairSpec(
                    key=key,
                    role=role,
                    lam=s.lam,
                    alpha=s.alpha,
                    temperature=s.temperature,
                    eos=self._eos,
                    stop=tuple(s.stop),
                    prefix_tail=tuple(agreed[-16:]),
                )
                prompts.append(TokensPrompt(prompt_token_ids=ids + agreed))
                params.append(
                    SamplingParams(
                        temperature=0.0,
                        max_tokens=remaining,
                        logprobs=0,
                        detokenize=False,
                        stop_token_ids=[self._eos],
                        extra_args=spec.to_extra(),
                    )
                )
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self.stats.waves += 1
        return [
            (pair, self._check_pair(pair, outputs[2 * k], outputs[2 * k + 1]))
            for k, pair in enumerate(wave)
        ]

    @staticmethod
    def _member(output: Any) -> MemberOutput:
        completion = output.outputs[0]
        ids = list(completion.token_ids)
        codes = [
            float(step[tok].logprob)
            for tok, step in zip(ids, completion.logprobs or [], strict=False)
        ]
        return MemberOutput(token_ids=ids, codes=codes)

    def _check_pair(self, pair: _Pair, out_pos: Any, out_neg: Any) -> DecodeResult | None:
        progress = pair.progress
        continuations, extra = progress.continuations, progress.extra_tokens
        settings = pair.request.settings
        tokens = progress.settle(
            self._member(out_pos), self._member(out_neg), settings.max_new_tokens
        )
        self.stats.pairs_continued += progress.continuations - continuations
        self.stats.extra_tokens += progress.extra_tokens - extra
        if tokens is None:
            return None
        # Every finished pair's result carries what losing lockstep cost it, however it ended.
        result = self._finish(
            pair.request.request_id, settings, tokens, len(pair.pos_ids) + len(pair.neg_ids)
        )
        result.continuations = progress.continuations
        result.extra_tokens = progress.extra_tokens
        return result

    def close(self) -> None:
        if self.options.in_process:
            # See _IN_PROCESS_ENGINES: it lives until the process exits (a worker holds one
            # engine for its whole life anyway).
            return
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
