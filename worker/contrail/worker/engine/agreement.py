"""How far two engines' outputs for the same pair agree, and whether a disagreement is a near-tie.

Two engines that round the same model differently (vLLM's kernels and transformers', bf16 and
fp32, one GPU and another) can pick different tokens where two candidates score almost alike;
from that step on they write different rationales, both faithful to the rule. `first_divergence`
finds that step and measures, under a transformers model, how close the call was, so a check can
accept near-ties and refuse real disagreements (docs/DECODING.md, "Precision"). Used by the
suite's bf16 test and by scripts/gpu_check.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from contrail.worker.engine.base import DecodeRequest

# One bf16 step at logits of magnitude 16 to 32: two engines rounding the same bf16 model
# differently can swap candidates whose scores differ by less than this.
BF16_TIE = 0.125


@dataclass(frozen=True)
class Divergence:
    """Where two engines' outputs for one pair first differ, and how close the call was.

    Two tokens: the contrastive score decided, so `margin` is the best score minus the worse of
    the two choices' scores. One side stopped (EOS) and the other went on: the stop rule ends a
    rationale when EOS is the contrastive choice or the plain argmax of the C+ logits, so
    `margin` is the smaller of the two distances between EOS and the best other token, on the
    score and on the untempered log p(. | C+)."""

    request_id: str
    step: int  # tokens both agree on before it
    stop: bool  # one side ended the rationale here
    margin: float

    @property
    def near_tie(self) -> bool:
        return self.margin <= BF16_TIE


def _last_logits(model: Any, ids: list[int]) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long, device=device))
    return torch.as_tensor(out.logits[0, -1]).double().cpu()


def first_divergence(
    model: Any,
    tokenizer: Any,
    request: DecodeRequest,
    ours: Sequence[int],
    theirs: Sequence[int],
) -> Divergence | None:
    """None when the two token lists are equal; otherwise the step where they part and the
    margins, under `model`, between the best candidate and each side's choice there (EOS when a
    side stopped)."""
    if list(ours) == list(theirs):
        return None
    if request.neg_prompt is None:
        raise ValueError("first_divergence compares contrastive pairs")
    step = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
        min(len(ours), len(theirs)),
    )
    eos = int(tokenizer.eos_token_id)
    picks = [ids[step] if step < len(ids) else eos for ids in (ours, theirs)]
    s = request.settings
    prefix = list(ours[:step])
    pos = _last_logits(model, list(tokenizer(request.pos_prompt)["input_ids"]) + prefix)
    neg = _last_logits(model, list(tokenizer(request.neg_prompt)["input_ids"]) + prefix)
    logp_pos = torch.log_softmax(pos / s.temperature, dim=-1)
    score = logp_pos - s.lam * torch.log_softmax(neg, dim=-1)
    if s.alpha > 0:
        score[logp_pos < math.log(s.alpha) + logp_pos.max()] = -math.inf
    if eos not in picks:
        margin = float(score.max() - min(score[t] for t in picks))
        return Divergence(request.request_id, step, False, margin)

    def eos_margin(values: torch.Tensor) -> float:
        others = values.clone()
        others[eos] = -math.inf
        return abs(float(values[eos] - others.max()))

    plain = torch.log_softmax(pos, dim=-1)  # the engines' plain argmax is on raw logits
    margin = min(eos_margin(score), eos_margin(plain))
    return Divergence(request.request_id, step, True, margin)
