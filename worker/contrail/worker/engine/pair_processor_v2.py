"""The pair processor for vLLM's Model Runner V2 (`vllm.v1.worker.gpu.sample.logits_processor`).

Same protocol as the V1 processor (`pair_processor`): every step, both rows of a (C+, C-) pair
present and in step are forced to one token chosen by `contrastive_choice` and the shared
`StopRule`, with the VALID code; a row without its partner, or a pair out of step, is forced to EOS
with the ABORT code, and the driver continues the pair from its agreed prefix. What V2 changes:

- state is keyed by the runner's request *slot*, recycled through a free list without a removal
  call: `add_request` overwrites whatever the slot's previous occupant left;
- rows are laid out afresh every step (`LogitsContext.idx_mapping_np`: batch position -> slot),
  so pairs are found from the host-side mapping, never from moves;
- the token history lives on the device (`all_token_ids`, `total_len`, `prompt_len`, kept by the
  runner's own kernels in stream order): output lengths, whether a row samples its request's next
  token (not a partial-prefill chunk), and the recent tokens the stop rule reads are gathered
  there and come back with the chosen tokens in one device-to-host copy per step; the forced rows
  go over in one host-to-device copy, as in V1.

A partial-prefill row's sample is thrown away by the runner: a pair with both rows in prefill is
left alone, and a pair with one row in prefill cannot stay in step (only the other row commits
a token), so it is aborted, as the V1 processor ends up doing one step later.

V2 needs Triton (`VllmConfig`: "Model Runner V2 requires Triton"), which vLLM's CPU build has not
(triton-cpu is not published): on this project's machines the processor is exercised against
V2's interface with runner-shaped buffers (tests/test_pair_processor_v2.py), never inside a V2
engine. See docs/DECODING.md, "Model Runner V2".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from vllm import SamplingParams
from vllm.v1.worker.gpu.sample.logits_processor import (
    LogitsContext,
    LogitsProcessor,
    LogitsProcRequestState,
)

from contrail.worker.engine.lockstep import ABORT_CODE, VALID_CODE
from contrail.worker.engine.pair_processor import (
    ContrastivePairLogitsProcessor,
    PairSpec,
    force_rows,
    next_token,
    stop_rule,
    text_ended,
)
from contrail.worker.engine.progress import STEPS
from contrail.worker.engine.scoring import contrastive_choice
from contrail.worker.engine.stopping import StopRule, token_texts

_RECENT = 16  # as in V1: enough history to see any stop string
_FIXED = 5  # columns before the recent tokens in the per-step readback (see _readback)


@dataclass(frozen=True)
class _Slot:
    spec: PairSpec
    rule: StopRule


@dataclass(frozen=True)
class _Pair:
    key: str
    pos: int  # batch rows
    neg: int
    slot: _Slot  # the C+ member's (both members share key, settings and stop rule)


@dataclass(frozen=True)
class _Layout:
    """The pairing of one step's rows; reused while the slot order and the slots' occupants
    stay the same."""

    lone: list[tuple[int, int]]  # (row, eos) of rows whose partner is not in the batch
    pairs: list[_Pair]
    pos_rows: torch.Tensor  # [pairs] on the device
    neg_rows: torch.Tensor
    pos_slots: torch.Tensor
    neg_slots: torch.Tensor
    tail_lens: torch.Tensor  # [pairs]: agreed-prefix tokens at the end of each prompt
    lam: torch.Tensor
    alpha: torch.Tensor
    temperature: torch.Tensor
    any_alpha: bool


class ContrastivePairLogitsProcessorV2(LogitsProcessor):
    """Chooses one token per (C+, C-) pair from both rows and forces both rows to it (V2)."""

    def __init__(self, vllm_config: Any, req_states: LogitsProcRequestState) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(vllm_config.model_config.tokenizer)
        self._texts = token_texts(cast(Any, tokenizer))
        self._state = req_states
        self._slots: dict[int, _Slot] = {}
        self._aborted: set[str] = set()
        self._stop_rules: dict[tuple[int, tuple[str, ...]], StopRule] = {}
        self._layout: _Layout | None = None
        self._layout_key: bytes = b""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        ContrastivePairLogitsProcessor.validate_params(sampling_params)

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        # The slot may hold a finished request's state: forget it before anything else.
        previous = self._slots.pop(req_idx, None)
        if previous is not None and not any(
            s.spec.key == previous.spec.key for s in self._slots.values()
        ):
            self._aborted.discard(previous.spec.key)
        self._layout = None
        spec = PairSpec.from_params(sampling_params)
        if spec is not None:
            self._slots[req_idx] = _Slot(spec, stop_rule(self._stop_rules, self._texts, spec))
        # True for every request, plain ones included: V2 calls apply() only for batches with a
        # row some stage asked for, and apply() ticks the watchdog's step counter, which must
        # advance for greedy waves too. apply() leaves rows without a pair untouched.
        return True

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        STEPS.tick()  # the worker's progress watchdog reads it (in-process engine only)
        if not self._slots:
            return logits
        slots = ctx.idx_mapping_np
        if int(logits.shape[0]) != len(slots):
            # One logits row per request; speculative decoding (several rows per request) is
            # refused when the engine starts.
            raise RuntimeError("the pair processor needs one logits row per request")
        layout = self._layout_for(slots, logits.device)
        rows: list[int] = []
        tokens: list[int] = []
        codes: list[float] = []
        for row, eos in layout.lone:
            rows.append(row)
            tokens.append(eos)
            codes.append(ABORT_CODE)
        if layout.pairs:
            self._decide_pairs(logits, ctx, layout, rows, tokens, codes)
        force_rows(logits, rows, tokens, codes)
        return logits

    def _layout_for(self, slots: Any, device: torch.device) -> _Layout:
        key = slots.tobytes()
        if self._layout is None or key != self._layout_key:
            self._layout = self._pair_up([int(s) for s in slots], device)
            self._layout_key = key
        return self._layout

    def _pair_up(self, slots: list[int], device: torch.device) -> _Layout:
        members: dict[str, list[tuple[int, int] | None]] = {}  # key -> [(row, slot) of C+, C-]
        for row, slot in enumerate(slots):
            held = self._slots.get(slot)
            if held is not None:
                members.setdefault(held.spec.key, [None, None])[held.spec.role] = (row, slot)
        lone: list[tuple[int, int]] = []
        found: list[tuple[_Pair, int, int]] = []
        for key, (pos, neg) in members.items():
            if pos is None or neg is None:
                row, slot = pos if pos is not None else cast(tuple[int, int], neg)
                lone.append((row, self._slots[slot].spec.eos))
            else:
                found.append((_Pair(key, pos[0], neg[0], self._slots[pos[1]]), pos[1], neg[1]))
        pairs = [p for p, _, _ in found]
        specs = [p.slot.spec for p in pairs]

        def ints(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        def floats(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        return _Layout(
            lone=lone,
            pairs=pairs,
            pos_rows=ints([p.pos for p in pairs]),
            neg_rows=ints([p.neg for p in pairs]),
            pos_slots=ints([s for _, s, _ in found]),
            neg_slots=ints([s for _, _, s in found]),
            tail_lens=ints([len(s.prefix_tail) for s in specs]),
            lam=floats([s.lam for s in specs]),
            alpha=floats([s.alpha for s in specs]),
            temperature=floats([s.temperature for s in specs]),
            any_alpha=any(s.alpha > 0 for s in specs),
        )

    def _readback(self, logits: torch.Tensor, ctx: LogitsContext, t: _Layout) -> list[list[int]]:
        """Per pair, on the device, then one copy to the host: [chosen, plain, C+ output length,
        C- output length, live rows (0-2), then the C+ row's last _RECENT tokens since the start
        of the agreed prefix (-1 where there are none)]."""
        state = self._state
        total = state.total_len.gpu.long()
        prompt = state.prompt_len.gpu.long()
        chosen, plain = contrastive_choice(
            logits[t.pos_rows],
            logits[t.neg_rows],
            t.lam,
            t.alpha,
            t.temperature,
            any_alpha=t.any_alpha,
        )
        total_p, total_n = total[t.pos_slots], total[t.neg_slots]
        # A row samples its request's next token when it is fed the last known token (a
        # partial-prefill chunk stops short of it, and its sample is thrown away).
        pos = ctx.pos.long()
        live = (pos[t.pos_rows] + 1 == total_p).long() + (pos[t.neg_rows] + 1 == total_n).long()
        offsets = torch.arange(-_RECENT, 0, device=logits.device)
        where = total_p.unsqueeze(1) + offsets  # [pairs, _RECENT] positions in the history
        start = (prompt[t.pos_slots] - t.tail_lens).unsqueeze(1)
        recent = state.all_token_ids.gpu[t.pos_slots.unsqueeze(1), where.clamp_min(0)].long()
        recent = recent.masked_fill(where < start, -1)
        fixed = torch.stack(
            (chosen, plain, total_p - prompt[t.pos_slots], total_n - prompt[t.neg_slots], live),
            dim=1,
        )
        return cast(list[list[int]], torch.cat((fixed, recent), dim=1).tolist())

    def _decide_pairs(
        self,
        logits: torch.Tensor,
        ctx: LogitsContext,
        layout: _Layout,
        rows: list[int],
        tokens: list[int],
        codes: list[float],
    ) -> None:
        aborted = self._aborted
        for pair, values in zip(layout.pairs, self._readback(logits, ctx, layout), strict=True):
            chosen, plain, out_p, out_n, live = values[:_FIXED]
            eos = pair.slot.spec.eos
            if live == 0 and pair.key not in aborted:
                continue  # both rows in prefill: their samples are thrown away
            if pair.key in aborted or live == 1 or out_p != out_n:
                aborted.add(pair.key)
                token, code = eos, ABORT_CODE
            else:
                rule = pair.slot.rule
                text = rule.text_of(t for t in values[_FIXED:] if t >= 0)
                token = (
                    eos if text_ended(rule, text) else next_token(rule, eos, text, chosen, plain)
                )
                code = VALID_CODE
            rows += (pair.pos, pair.neg)
            tokens += (token, token)
            codes += (code, code)
