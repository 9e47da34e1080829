"""The contrastive token choice of docs/METHOD.md section 2, shared by every engine.

    t = argmax_t [ log p(t | C+) - lam * log p(t | C-) ]

with log p the log-softmax of the logits (temperature on C+ only) and, when alpha > 0, only
tokens with p(t | C+) >= alpha * max p(. | C+) competing (adaptive plausibility).
Both engines call `contrastive_choice` so that they pick tokens by the same arithmetic.
"""

from __future__ import annotations

import math

import torch


def contrastive_choice(
    pos_logits: torch.Tensor,
    neg_logits: torch.Tensor,
    lam: torch.Tensor,
    alpha: torch.Tensor,
    temperature: torch.Tensor,
    any_alpha: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose one token per pair.

    pos_logits, neg_logits: float [pairs, vocab]; lam, alpha, temperature: float [pairs].
    `any_alpha`: whether some alpha is > 0, when the caller knows it on the host (the pair
    processor does, per batch layout); None reads it from `alpha`, a device sync on a GPU.
    Returns (chosen token ids [pairs], plain argmax under C+ [pairs]).
    """
    pos = pos_logits.float()
    plain_argmax = pos.argmax(dim=-1)
    pos_logp = torch.log_softmax(pos / temperature.unsqueeze(-1), dim=-1)
    neg_logp = torch.log_softmax(neg_logits.float(), dim=-1)
    score = pos_logp - lam.unsqueeze(-1) * neg_logp
    if any_alpha if any_alpha is not None else bool((alpha > 0).any()):
        # p >= alpha * max p  <=>  log p >= log alpha + max log p   (alpha = 0 keeps every token)
        log_alpha = torch.where(alpha > 0, alpha.clamp_min(1e-30).log(), -math.inf)
        cutoff = pos_logp.max(dim=-1).values + log_alpha
        score = score.masked_fill(pos_logp < cutoff.unsqueeze(-1), -math.inf)
    return score.argmax(dim=-1), plain_argmax
