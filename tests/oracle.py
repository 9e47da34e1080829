"""Independent oracles for the engines, built on transformers' own `generate`.

METHOD.md section 2: with alpha = 0, the contrastive score log p(t|C+) - lam * log p(t|C-) ranks
tokens exactly like classifier-free guidance with guidance scale g = 1 / (1 - lam) and C- as the
negative prompt (g * (a - b) + b = g * a - (g - 1) * b; divide by g). transformers implements CFG
in `UnbatchedClassifierFreeGuidanceLogitsProcessor` (`generate(guidance_scale=...,
negative_prompt_ids=...)`), one item at a time, with no padding.

These oracles do not apply the stop rule: compare an engine's ids with the oracle's ids cut to the
engine's length (and equal lengths when the engine stopped by LENGTH).
"""

from __future__ import annotations

from typing import Any

import torch


def cfg_generate(
    model: Any,
    tokenizer: Any,
    pos_prompt: str,
    neg_prompt: str,
    lam: float,
    max_new_tokens: int,
) -> list[int]:
    """Greedy CFG decoding of one item; returns the new token ids (no EOS stopping)."""
    if not 0.0 < lam < 1.0:
        raise ValueError("CFG equivalence needs 0 < lam < 1")
    pos = torch.tensor([tokenizer(pos_prompt)["input_ids"]], dtype=torch.long)
    neg = torch.tensor([tokenizer(neg_prompt)["input_ids"]], dtype=torch.long)
    with torch.inference_mode():
        out = model.generate(
            pos,
            attention_mask=torch.ones_like(pos),
            guidance_scale=1.0 / (1.0 - lam),
            negative_prompt_ids=neg,
            negative_prompt_attention_mask=torch.ones_like(neg),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,  # never stop early on EOS: compare a fixed length
            eos_token_id=None,
            pad_token_id=tokenizer.pad_token_id,
        )
    return [int(t) for t in out[0, pos.shape[1] :].tolist()]


def greedy_generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> list[int]:
    """Plain greedy decoding of one item with transformers (no EOS stopping)."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], dtype=torch.long)
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            eos_token_id=None,
            pad_token_id=tokenizer.pad_token_id,
        )
    return [int(t) for t in out[0, ids.shape[1] :].tolist()]
