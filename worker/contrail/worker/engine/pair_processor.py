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
from contrail.worker.engine.progress import STEPS
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
        self._stop_rules: dict[tuple[int, tuple[str, ...]], StopRule] = {}
        self._layout: _Layout | None = None

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
        self._layout = None  # rows came, went or moved: pair them up again at the next apply
        for index in batch_update.removed:
            self._forget(index)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            spec = PairSpec.from_params(params)
            if spec is None:
                self._forget(index)
                continue
            self._rows[index] = _Row(spec=spec, output_ids=output_ids, rule=self._rule(spec))
        for a, b, direction in batch_update.moved:
            row_a = self._rows.pop(a, None)
            row_b = self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if row_b is not None and direction == MoveDirectionality.SWAP:
                self._rows[a] = row_b

    def _rule(self, spec: PairSpec) -> StopRule:
        return stop_rule(self._stop_rules, self._texts, spec)

    def _forget(self, index: int) -> None:
        row = self._rows.pop(index, None)
        if row is not None and not any(r.spec.key == row.spec.key for r in self._rows.values()):
            self._aborted.discard(row.spec.key)

    def _pair_up(self, num_rows: int, device: torch.device) -> _Layout:
        """Which rows form pairs: rebuilt only when the batch changed (update_state)."""
        members: dict[str, list[int | None]] = {}
        for index, row in self._rows.items():
            if index < num_rows:
                members.setdefault(row.spec.key, [None, None])[row.spec.role] = index
        lone: list[tuple[int, int]] = []
        pairs: list[_PairRows] = []
        for key, (pos, neg) in members.items():
            if pos is None or neg is None:
                single = pos if pos is not None else neg
                assert single is not None
                lone.append((single, self._rows[single].spec.eos))
            else:
                pairs.append(_PairRows(key, pos, neg, self._rows[pos], self._rows[neg]))
        return _Layout(num_rows, lone, pairs, _PairTensors.build(pairs, device))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        STEPS.tick()  # the worker's progress watchdog reads it (in-process engine only)
        if not self._rows:
            return logits
        num_rows = int(logits.shape[0])
        layout = self._layout
        if layout is None or layout.num_rows != num_rows or layout.device != logits.device:
            layout = self._layout = self._pair_up(num_rows, logits.device)

        rows: list[int] = []
        tokens: list[int] = []
        codes: list[float] = []
        for lone, eos in layout.lone:
            rows.append(lone)
            tokens.append(eos)
            codes.append(ABORT_CODE)
        to_choose: list[int] = []  # positions in layout.pairs
        tails: list[str] = []  # the recent text of each pair in to_choose
        aborted = self._aborted
        for k, pair in enumerate(layout.pairs):
            row_p, row_n = pair.row_p, pair.row_n
            if pair.key in aborted or len(row_p.output_ids) != len(row_n.output_ids):
                aborted.add(pair.key)
                rows += (pair.pos, pair.neg)
                tokens += (row_p.spec.eos, row_n.spec.eos)
                codes += (ABORT_CODE, ABORT_CODE)
                continue
            # The recent text once per pair and step: both "has it ended?" and the tail for the
            # stop decision come from it (StopRule.ended / StopRule.tail_of on the same ids).
            text = row_p.rule.text_of(row_p.recent())
            if text_ended(row_p.rule, text):
                rows += (pair.pos, pair.neg)
                tokens += (row_p.spec.eos, row_n.spec.eos)
                codes += (VALID_CODE, VALID_CODE)
                continue
            to_choose.append(k)
            tails.append(text)

        if to_choose:
            self._choose(logits, layout, to_choose, tails, rows, tokens, codes)
        force_rows(logits, rows, tokens, codes)
        return logits

    def _choose(
        self,
        logits: torch.Tensor,
        layout: _Layout,
        to_choose: list[int],
        tails: list[str],
        rows: list[int],
        tokens: list[int],
        codes: list[float],
    ) -> None:
        """Pick the token of every pair in `to_choose`; appends (row, token, code) entries."""
        t = layout.tensors
        if len(to_choose) == len(layout.pairs):  # the usual step: every pair chooses
            pos_idx, neg_idx, lam, alpha, temperature = (
                t.pos_idx,
                t.neg_idx,
                t.lam,
                t.alpha,
                t.temperature,
            )
        else:
            sel = to_device([to_choose], logits.device)[0]
            pos_idx, neg_idx = t.pos_idx[sel], t.neg_idx[sel]
            lam, alpha, temperature = t.lam[sel], t.alpha[sel], t.temperature[sel]
        # Whether any pair filters by plausibility is known on the host, per layout: no sync.
        chosen, plain = contrastive_choice(
            logits[pos_idx], logits[neg_idx], lam, alpha, temperature, any_alpha=t.any_alpha
        )
        picked, plains = torch.stack((chosen, plain)).tolist()  # one device-to-host copy
        pairs = layout.pairs
        for k, text, c, p in zip(to_choose, tails, picked, plains, strict=True):
            pair = pairs[k]
            token = next_token(pair.row_p.rule, pair.row_p.spec.eos, text, c, p)
            rows += (pair.pos, pair.neg)
            tokens += (token, token)
            codes += (VALID_CODE, VALID_CODE)


def force_rows(
    logits: torch.Tensor, rows: list[int], tokens: list[int], codes: list[float]
) -> None:
    """Leave each listed row one finite entry, its token, holding its code (which comes back as
    the token's processed "logprob"). One host-to-device copy (rows, tokens and codes stacked;
    the codes are whole numbers), from pinned memory on CUDA so it does not wait on pageable
    memory."""
    if not rows:
        return
    forced = to_device([rows, tokens, [int(c) for c in codes]], logits.device)
    index = forced[0]
    logits.index_fill_(0, index, -math.inf)
    logits.index_put_((index, forced[1]), forced[2].to(logits.dtype))


def text_ended(rule: StopRule, recent_text: str) -> bool:
    """The pair's last token completed a stop string: the rationale is over (EOS, VALID)."""
    return any(s in recent_text for s in rule.stop)


def next_token(rule: StopRule, eos: int, recent_text: str, chosen: int, plain: int) -> int:
    """The token both rows of a pair in step are forced to, from the contrastive choice and the
    plain argmax (the shared stop rule may end the rationale instead: EOS)."""
    tail = recent_text[-rule.tail_len :] if rule.tail_len else ""
    action, _ = rule.decide(tail, chosen, plain)
    return eos if action is Action.STOP else chosen


def stop_rule(
    cache: dict[tuple[int, tuple[str, ...]], StopRule], texts: list[str], spec: PairSpec
) -> StopRule:
    """The spec's stop rule, built once per (eos, stop strings)."""
    key = (spec.eos, spec.stop)
    rule = cache.get(key)
    if rule is None:
        rule = cache[key] = StopRule.build(texts, (spec.eos,), spec.stop)
    return rule


def to_device(columns: list[list[int]], device: torch.device) -> torch.Tensor:
    """Equal-length integer columns as one [columns, n] int64 tensor on `device`, in one copy
    (staged in pinned memory for CUDA, so the copy can overlap)."""
    host = torch.tensor(columns, dtype=torch.long)
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)


@dataclass(frozen=True)
class _PairRows:
    key: str
    pos: int
    neg: int
    row_p: _Row
    row_n: _Row


@dataclass(frozen=True)
class _PairTensors:
    """Per-pair index and settings columns, built once per batch layout."""

    pos_idx: torch.Tensor
    neg_idx: torch.Tensor
    lam: torch.Tensor
    alpha: torch.Tensor
    temperature: torch.Tensor
    any_alpha: bool  # some pair filters by plausibility (known here, so no device sync later)

    @classmethod
    def build(cls, pairs: list[_PairRows], device: torch.device) -> _PairTensors:
        specs = [p.row_p.spec for p in pairs]

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, device=device, dtype=torch.float32)

        return cls(
            pos_idx=torch.tensor([p.pos for p in pairs], device=device, dtype=torch.long),
            neg_idx=torch.tensor([p.neg for p in pairs], device=device, dtype=torch.long),
            lam=column([s.lam for s in specs]),
            alpha=column([s.alpha for s in specs]),
            temperature=column([s.temperature for s in specs]),
            any_alpha=any(s.alpha > 0 for s in specs),
        )


@dataclass(frozen=True)
class _Layout:
    """The pairing of the persistent batch's rows, valid until the next batch update."""

    num_rows: int
    lone: list[tuple[int, int]]  # (row, eos) of rows whose partner is not in the batch
    pairs: list[_PairRows]
    tensors: _PairTensors

    @property
    def device(self) -> torch.device:
        return self.tensors.pos_idx.device
