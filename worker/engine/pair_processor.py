"""vLLM batch-level logits processor that decodes each (C+, C-) pair in lockstep.

Every contrastive item runs as two requests in the same engine batch. At each step this processor
finds both rows of a pair, picks one token from both rows with `contrastive_choice` and the shared
`StopRule`, and forces both rows to it. vLLM's scheduler does not keep pairs together (chunked
prefill, KV pressure and preemption move members independently), so:

- a row whose partner is absent, or a pair whose output lengths differ, is forced to EOS with the
  ABORT code: such a choice can never reach the output (the driver rejects any token without the
  VALID code and continues the pair from its agreed prefix);
- everything a step decides is derived from the live output ids (and the agreed prefix carried in
  the request), never from state updated when a token was chosen: a choice made while a row was
  still in partial prefill is thrown away by vLLM and leaves nothing behind here.

This is the V1 model-runner interface (`vllm.v1.sample.logits_processor.LogitsProcessor`), the
one vLLM's CPU build runs. GPU workers force the V1 runner (see VllmPairEngine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from contrail.worker.engine.lockstep import ABORT_CODE, VALID_CODE
from contrail.worker.engine.scoring import contrastive_choice
from contrail.worker.engine.stopping import Action, StopRule, token_texts

EXTRA_KEY = "contrail_pair"
_RECENT = 16  # tokens of history enough to see any stop string (stop strings are <= 32 chars)


@dataclass(frozen=True)
class PairSpec:
    """The per-request arguments, carried in SamplingParams.extra_args[EXTRA_KEY]."""

    key: str  # unique per pair and attempt
    role: int  # 0 = C+, 1 = C-
    lam: float
    alpha: float
    temperature: float
    eos: int
    stop: tuple[str, ...]
    prefix_tail: tuple[int, ...]  # last tokens of the agreed prefix already in the prompt

    def to_extra(self) -> dict[str, Any]:
        return {
            EXTRA_KEY: {
                **self.__dict__,
                "stop": list(self.stop),
                "prefix_tail": list(self.prefix_tail),
            }
        }

    @classmethod
    def from_params(cls, params: SamplingParams | None) -> PairSpec | None:
        raw = (params.extra_args or {}).get(EXTRA_KEY) if params is not None else None
        if raw is None:
            return None
        return cls(
            key=str(raw["key"]),
            role=int(raw["role"]),
            lam=float(raw["lam"]),
            alpha=float(raw["alpha"]),
            temperature=float(raw["temperature"]),
            eos=int(raw["eos"]),
            stop=tuple(raw["stop"]),
            prefix_tail=tuple(int(t) for t in raw["prefix_tail"]),
        )


@dataclass
class _Row:
    spec: PairSpec
    output_ids: list[int]  # live reference to the request's output tokens
    rule: StopRule

    def recent(self) -> list[int]:
        out = self.output_ids[-_RECENT:]
        if len(out) >= _RECENT:
            return list(out)
        return list(
            self.spec.prefix_tail[len(self.spec.prefix_tail) - (_RECENT - len(out)) :]
        ) + list(out)


class ContrastivePairLogitsProcessor(LogitsProcessor):
    """Chooses one token per (C+, C-) pair from both rows and forces both rows to it."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        from transformers import AutoTokenizer

        model_config = vllm_config.model_config
        tokenizer = AutoTokenizer.from_pretrained(model_config.tokenizer)
        self._texts = token_texts(cast(Any, tokenizer))
        self._rows: dict[int, _Row] = {}
        self._aborted: set[str] = set()
        self._device = device

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        try:
            spec = PairSpec.from_params(sampling_params)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad {EXTRA_KEY} arguments: {exc}") from exc
        if spec is not None and sampling_params.temperature != 0.0:
            raise ValueError("pair requests must use temperature=0 (the processor picks the token)")

    def is_argmax_invariant(self) -> bool:
        # It replaces the token choice entirely, so greedy sampling must see it.
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._forget(index)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            spec = PairSpec.from_params(params)
            if spec is None:
                self._forget(index)
                continue
            rule = StopRule.build(self._texts, (spec.eos,), spec.stop)
            self._rows[index] = _Row(spec=spec, output_ids=output_ids, rule=rule)
        for a, b, direction in batch_update.moved:
            row_a = self._rows.pop(a, None)
            row_b = self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if row_b is not None and direction == MoveDirectionality.SWAP:
                self._rows[a] = row_b

    def _forget(self, index: int) -> None:
        row = self._rows.pop(index, None)
        if row is not None and not any(r.spec.key == row.spec.key for r in self._rows.values()):
            self._aborted.discard(row.spec.key)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._rows:
            return logits
        members: dict[str, list[int | None]] = {}
        for index, row in self._rows.items():
            if index < logits.shape[0]:
                members.setdefault(row.spec.key, [None, None])[row.spec.role] = index

        forced: list[tuple[int, int, float]] = []  # (row, token, code)
        to_choose: list[tuple[int, int]] = []
        for key, (pos, neg) in members.items():
            if pos is None or neg is None:
                lone = pos if pos is not None else neg
                assert lone is not None
                forced.append((lone, self._rows[lone].spec.eos, ABORT_CODE))
                continue
            row_p, row_n = self._rows[pos], self._rows[neg]
            if key in self._aborted or len(row_p.output_ids) != len(row_n.output_ids):
                self._aborted.add(key)
                forced += [(pos, row_p.spec.eos, ABORT_CODE), (neg, row_n.spec.eos, ABORT_CODE)]
                continue
            if row_p.rule.ended(row_p.recent()):
                forced += [(pos, row_p.spec.eos, VALID_CODE), (neg, row_n.spec.eos, VALID_CODE)]
                continue
            to_choose.append((pos, neg))

        if to_choose:
            forced += self._choose(logits, to_choose)
        if forced:
            rows = torch.tensor([f[0] for f in forced], device=logits.device)
            tokens = torch.tensor([f[1] for f in forced], device=logits.device)
            codes = torch.tensor([f[2] for f in forced], device=logits.device, dtype=logits.dtype)
            logits[rows] = -math.inf
            logits[rows, tokens] = codes
        return logits

    def _choose(
        self, logits: torch.Tensor, pairs: list[tuple[int, int]]
    ) -> list[tuple[int, int, float]]:
        specs = [self._rows[p].spec for p, _ in pairs]
        pos_idx = torch.tensor([p for p, _ in pairs], device=logits.device)
        neg_idx = torch.tensor([n for _, n in pairs], device=logits.device)

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, device=logits.device, dtype=torch.float32)

        chosen, plain = contrastive_choice(
            logits[pos_idx],
            logits[neg_idx],
            column([s.lam for s in specs]),
            column([s.alpha for s in specs]),
            column([s.temperature for s in specs]),
        )
        forced: list[tuple[int, int, float]] = []
        for (pos, neg), c, p in zip(pairs, chosen.tolist(), plain.tolist(), strict=True):
            row = self._rows[pos]
            action, _ = row.rule.decide(row.rule.tail_of(row.recent()), c, p)
            token = row.spec.eos if action is Action.STOP else c
            forced += [(pos, token, VALID_CODE), (neg, token, VALID_CODE)]
        return forced
