"""The reference engine: contrastive pair decoding in plain torch + transformers.

It is the correctness oracle for the vLLM pair engine and the fallback where vLLM is not
installed. One call decodes its requests in batches of up to ``max_batch`` requests (and at most
``max_batch_tokens`` padded prompt tokens: rows x longest prompt); a contrastive
request puts its C+ and C- rows side by side in the batch, and both rows always receive the same
chosen token, so the pair can never lose lockstep.

Per step and pair: ``contrastive_choice`` (scoring.py) picks (chosen, plain) from the two rows'
last logits (greedy requests: both are the argmax of C+), ``StopRule.decide`` (stopping.py) decides
whether the rationale goes on, and the chosen token is fed to both rows. Prompts are left padded;
explicit position ids keep every row's positions 0..len-1 so padding does not shift RoPE, and the
KV cache makes every step one forward of the new token only. Pairs that finish are dropped from
the batch (their rows are cut out of the KV cache), so a long rationale does not make finished
ones pay for its steps.

``num_threads`` sets torch's intra-op threads for the duration of each ``generate`` call (and
restores them): on a small, busy CPU, OpenMP threads that spin against other processes made every
forward pass tens of times slower than one thread.

Prompts are tokenized as ``tokenizer(prompt)["input_ids"]`` (the tokenizer's default
special-token handling; neither SmolLM2 nor the tiny test model adds a BOS token), exactly as the
vLLM engine does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from contrail.client.types import FinishReason
from contrail.worker.engine.base import (
    DecodeRequest,
    DecodeResult,
    Engine,
    EngineStats,
    prompt_char_bound,
)
from contrail.worker.engine.progress import STEPS
from contrail.worker.engine.scoring import contrastive_choice
from contrail.worker.engine.stopping import Action, StopRule, finalize_text, token_texts
from contrail.worker.lm_batches import left_padded
from contrail.worker.models import DEFAULT_MODEL, ModelSpec, resolve_model


@dataclass
class _Job:
    """One request being decoded in a chunk."""

    index: int  # position in the caller's request list
    request: DecodeRequest
    pos_ids: list[int]
    neg_ids: list[int] | None
    rule: StopRule
    emitted: list[int] = field(default_factory=list)
    tail: str = ""
    finish: FinishReason | None = None

    @property
    def rows(self) -> int:
        return 1 if self.neg_ids is None else 2

    @property
    def prompt_tokens(self) -> int:
        return len(self.pos_ids) + (len(self.neg_ids) if self.neg_ids is not None else 0)


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


class ReferenceEngine(Engine):
    """Contrastive pair decoding with transformers (batched, KV-cached, float32 by default)."""

    def __init__(
        self,
        model: str | os.PathLike[str] | ModelSpec = DEFAULT_MODEL,
        *,
        dtype: torch.dtype | str = torch.float32,
        max_batch: int = 16,
        max_batch_tokens: int = 8192,
        max_model_len: int | None = None,
        device: str | torch.device = "cpu",
        attn_implementation: str | None = "sdpa",
        drop_finished: bool = True,
        num_threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        spec = model if isinstance(model, ModelSpec) else resolve_model(model, cache_dir)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown dtype {dtype!r}")
        self.spec = spec
        self.model_name = spec.name
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.drop_finished = drop_finished
        self.num_threads = num_threads
        self.stats = EngineStats()
        self.tokenizer: Any = cast(Any, AutoTokenizer).from_pretrained(spec.path)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        self.model: Any = cast(Any, AutoModelForCausalLM).from_pretrained(spec.path, **kwargs)
        self.model.to(self.device).eval()
        config = self.model.config
        limit = int(getattr(config, "max_position_embeddings", 0) or 0)
        self.max_model_len = int(max_model_len) if max_model_len is not None else limit
        if limit and self.max_model_len > limit:
            raise ValueError(f"max_model_len {self.max_model_len} > model limit {limit}")
        self.vocab_size = int(config.vocab_size)
        self.max_prompt_chars = prompt_char_bound(self.tokenizer.get_vocab(), self.max_model_len)

        gen = getattr(self.model, "generation_config", None)
        eos = _as_id_list(getattr(gen, "eos_token_id", None))
        eos += _as_id_list(self.tokenizer.eos_token_id)
        self.eos_ids: frozenset[int] = frozenset(eos)
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = int(pad) if pad is not None else (min(eos) if eos else 0)
        # token texts once per engine; ids past the tokenizer (padded vocab) decode to ""
        self.token_texts = token_texts(self.tokenizer, min(len(self.tokenizer), self.vocab_size))
        self._rules: dict[tuple[str, ...], StopRule] = {}

    # -- public API ------------------------------------------------------------------------

    def generate(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        if self.num_threads is None:
            return self._generate(requests)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            return self._generate(requests)
        finally:
            torch.set_num_threads(previous)

    def _generate(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        results: list[DecodeResult | None] = [None] * len(requests)
        jobs: list[_Job] = []
        for index, request in enumerate(requests):
            job = self._prepare(index, request)
            error = self._check(job)
            if error is not None:
                results[index] = self._error_result(job, error)
            elif request.settings.max_new_tokens <= 0:
                results[index] = self._result(job, FinishReason.LENGTH)
            else:
                jobs.append(job)

        for chunk in self._chunks(jobs):
            self._decode_chunk(chunk)
            self.stats.waves += 1
            for job in chunk:
                assert job.finish is not None
                results[job.index] = self._result(job, job.finish)

        out = [r for r in results if r is not None]
        assert len(out) == len(requests)
        self.stats.requests += len(out)
        self.stats.prompt_tokens += sum(r.prompt_tokens for r in out)
        self.stats.completion_tokens += sum(r.completion_tokens for r in out)
        return out

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt, exactly as every engine computes them."""
        return [int(i) for i in self.tokenizer(prompt)["input_ids"]]

    def stop_rule(self, stop: Sequence[str]) -> StopRule:
        key = tuple(stop)
        rule = self._rules.get(key)
        if rule is None:
            rule = StopRule.build(self.token_texts, self.eos_ids, key)
            self._rules[key] = rule
        return rule

    def close(self) -> None:
        self.model = None
        self._rules.clear()

    # -- internals -------------------------------------------------------------------------

    def _chunks(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Batches of at most ``max_batch`` requests whose padded prompt block (rows x longest
        prompt) stays within ``max_batch_tokens`` (a single request always fits). Jobs are
        sorted by length first, so padding stays small; results go back in request order."""
        ordered = sorted(jobs, key=lambda j: max(len(j.pos_ids), len(j.neg_ids or ())))
        chunks: list[list[_Job]] = []
        current: list[_Job] = []
        rows = width = 0
        for job in ordered:
            longest = max(len(job.pos_ids), len(job.neg_ids or ()))
            grown = (rows + job.rows) * max(width, longest)
            if current and (len(current) >= self.max_batch or grown > self.max_batch_tokens):
                chunks.append(current)
                current, rows, width = [], 0, 0
            current.append(job)
            rows += job.rows
            width = max(width, longest)
        if current:
            chunks.append(current)
        return chunks

    def _prepare(self, index: int, request: DecodeRequest) -> _Job:
        pos_ids = self.encode(request.pos_prompt)
        neg_ids = self.encode(request.neg_prompt) if request.neg_prompt is not None else None
        return _Job(index, request, pos_ids, neg_ids, self.stop_rule(request.settings.stop))

    def _check(self, job: _Job) -> str | None:
        max_new = job.request.settings.max_new_tokens
        lengths = [len(job.pos_ids)] + ([len(job.neg_ids)] if job.neg_ids is not None else [])
        if min(lengths) == 0:
            return "empty_prompt: a prompt encodes to no tokens"
        if max(lengths) + max(max_new, 0) > self.max_model_len:
            sizes = f"C+ {lengths[0]}" + (f", C- {lengths[1]}" if len(lengths) > 1 else "")
            return (
                f"prompt_too_long: prompt tokens ({sizes}) + max_new_tokens {max_new} "
                f"> max_model_len {self.max_model_len}"
            )
        return None

    def _result(self, job: _Job, finish: FinishReason) -> DecodeResult:
        stop = job.request.settings.stop
        text = finalize_text(self.tokenizer.decode(job.emitted, skip_special_tokens=True), stop)
        return DecodeResult(
            request_id=job.request.request_id,
            token_ids=list(job.emitted),
            text=text,
            finish_reason=finish,
            prompt_tokens=job.prompt_tokens,
            completion_tokens=len(job.emitted),
        )

    def _error_result(self, job: _Job, error: str) -> DecodeResult:
        return DecodeResult(
            request_id=job.request.request_id,
            token_ids=[],
            text="",
            finish_reason=FinishReason.ERROR,
            prompt_tokens=job.prompt_tokens,
            error=error,
        )

    def _forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> tuple[torch.Tensor, Any]:
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits: torch.Tensor = out.logits[:, -1, :].float()
        return logits, out.past_key_values

    @torch.inference_mode()
    def _decode_chunk(self, jobs: list[_Job]) -> None:
        device = self.device
        prompts: list[list[int]] = []
        row_of: list[tuple[int, int | None]] = []  # per job: (C+ row, C- row)
        for job in jobs:
            pos_row = len(prompts)
            prompts.append(job.pos_ids)
            neg_row = None
            if job.neg_ids is not None:
                neg_row = len(prompts)
                prompts.append(job.neg_ids)
            row_of.append((pos_row, neg_row))

        input_ids, mask, positions = left_padded(prompts, self.pad_id)
        input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
        logits, cache = self._forward(input_ids, mask, positions, None)
        last_pos = positions[:, -1:]

        active = list(range(len(jobs)))  # indices into jobs, in row order
        while active:
            STEPS.tick()  # the worker's progress watchdog reads it
            chosen, plain = self._choose(jobs, active, row_of, logits)
            next_tokens: dict[int, int] = {}
            for j in active:
                job = jobs[j]
                action, job.tail = job.rule.decide(job.tail, chosen[j], plain[j])
                if action is Action.STOP:
                    job.finish = FinishReason.STOP
                    continue
                job.emitted.append(chosen[j])
                if action is Action.EMIT_AND_FINISH:
                    job.finish = FinishReason.STOP
                elif len(job.emitted) >= job.request.settings.max_new_tokens:
                    job.finish = FinishReason.LENGTH
                else:
                    next_tokens[j] = chosen[j]
            still = [j for j in active if j in next_tokens]
            if not still:
                break

            n_rows = int(mask.shape[0])
            step = torch.full((n_rows, 1), self.pad_id, dtype=torch.long)
            for j in still:
                pos_row, neg_row = row_of[j]
                step[pos_row, 0] = next_tokens[j]
                if neg_row is not None:
                    step[neg_row, 0] = next_tokens[j]
            step = step.to(device)

            if self.drop_finished and len(still) < len(active):
                keep: list[int] = []
                for j in still:
                    pos_row, neg_row = row_of[j]
                    new_pos = len(keep)
                    keep.append(pos_row)
                    new_neg = None
                    if neg_row is not None:
                        new_neg = len(keep)
                        keep.append(neg_row)
                    row_of[j] = (new_pos, new_neg)
                index = torch.tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(index)
                mask, last_pos, step = mask[index], last_pos[index], step[index]
                active = still
            else:
                active = still

            ones = torch.ones((int(mask.shape[0]), 1), dtype=mask.dtype, device=device)
            mask = torch.cat([mask, ones], dim=-1)
            last_pos = last_pos + 1
            logits, cache = self._forward(step, mask, last_pos, cache)

    def _choose(
        self,
        jobs: list[_Job],
        active: list[int],
        row_of: list[tuple[int, int | None]],
        logits: torch.Tensor,
    ) -> tuple[dict[int, int], dict[int, int]]:
        """(chosen, plain) token per active job."""
        chosen: dict[int, int] = {}
        plain: dict[int, int] = {}
        pairs = [j for j in active if row_of[j][1] is not None]
        singles = [j for j in active if row_of[j][1] is None]
        if pairs:
            pos_rows = torch.tensor([row_of[j][0] for j in pairs], device=logits.device)
            neg_rows = torch.tensor([row_of[j][1] for j in pairs], device=logits.device)
            settings = [jobs[j].request.settings for j in pairs]

            def vec(values: list[float]) -> torch.Tensor:
                return torch.tensor(values, dtype=torch.float32, device=logits.device)

            picked, argmax = contrastive_choice(
                logits[pos_rows],
                logits[neg_rows],
                vec([s.lam for s in settings]),
                vec([s.alpha for s in settings]),
                vec([s.temperature for s in settings]),
            )
            for j, c, p in zip(pairs, picked.tolist(), argmax.tolist(), strict=True):
                chosen[j], plain[j] = int(c), int(p)
        if singles:
            rows = torch.tensor([row_of[j][0] for j in singles], device=logits.device)
            for j, t in zip(singles, logits[rows].argmax(dim=-1).tolist(), strict=True):
                chosen[j] = plain[j] = int(t)
        return chosen, plain
