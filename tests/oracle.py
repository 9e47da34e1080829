"""Independent oracles for the engines, built on transformers' own `generate`.

docs/METHOD.md section 2: with alpha = 0, the contrastive score log p(t|C+) - lam * log p(t|C-)
ranks tokens exactly like classifier-free guidance with guidance scale g = 1 / (1 - lam) and C- as
the negative prompt (g * (a - b) + b = g * a - (g - 1) * b; divide by g). transformers implements
CFG in `UnbatchedClassifierFreeGuidanceLogitsProcessor` (`generate(guidance_scale=...,
negative_prompt_ids=...)`), one item at a time, with no padding.

These two do not apply the stop rule (and CFG covers only alpha = 0, temperature 1): compare an
engine's ids with the oracle's ids cut to the engine's length (and equal lengths when the engine
stopped by LENGTH).

`contrastive_decode` is the whole method (any lambda, alpha, temperature, stop strings) as a plain
loop over transformers forward passes, one item at a time, written from docs/METHOD.md without the
engines' `contrastive_choice` or `StopRule`: its tokens, finish reason and text are compared
exactly, so an empty or truncated engine output cannot pass as a prefix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Decoded:
    """What the independent loop decoded: ids (EOS never included), why it ended, the text."""

    token_ids: list[int]
    finish: str  # "stop" or "length"
    text: str


def _last_logits(model: Any, ids: list[int], cache: Any) -> tuple[torch.Tensor, Any]:
    out = model(
        input_ids=torch.tensor([ids], dtype=torch.long), past_key_values=cache, use_cache=True
    )
    return out.logits[0, -1].double(), out.past_key_values


def contrastive_decode(
    model: Any,
    tokenizer: Any,
    pos_prompt: str,
    neg_prompt: str,
    *,
    lam: float,
    alpha: float,
    temperature: float,
    max_new_tokens: int,
    stop: tuple[str, ...],
) -> Decoded:
    """docs/METHOD.md section 2 written out for one pair, sharing no code with the engines.

    One item at a time, no padding, each context with its own transformers KV cache; the score,
    the plausibility cut (in probability space) and the text stop rule are computed here from the
    definition: the token is argmax [log p(t|C+, T) - lam log p(t|C-)] over tokens with
    p(t|C+, T) >= alpha max p(.|C+, T); the rationale ends before a token when EOS is chosen or
    is the plain C+ argmax, or when the plain argmax would complete a stop string that the chosen
    token does not; it ends after a token that completes a stop string, or after max_new_tokens.
    """
    eos = {int(tokenizer.eos_token_id)}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        eos |= {int(gen_eos)} if isinstance(gen_eos, int) else {int(t) for t in gen_eos}

    def text(ids: list[int], special: bool = False) -> str:
        decoded: str = tokenizer.decode(
            ids, skip_special_tokens=not special, clean_up_tokenization_spaces=False
        )
        return decoded

    def has_stop(ids: list[int]) -> bool:
        joined = text(ids, special=True)
        return any(s in joined for s in stop)

    emitted: list[int] = []
    finish = "length"
    with torch.inference_mode():
        pos_logits, pos_cache = _last_logits(model, tokenizer(pos_prompt)["input_ids"], None)
        neg_logits, neg_cache = _last_logits(model, tokenizer(neg_prompt)["input_ids"], None)
        while len(emitted) < max_new_tokens:
            logp_pos = torch.log_softmax(pos_logits / temperature, dim=-1)
            score = logp_pos - lam * torch.log_softmax(neg_logits, dim=-1)
            if alpha > 0:
                p = logp_pos.exp()
                score[p < alpha * p.max()] = -math.inf
            chosen, plain = int(score.argmax()), int(pos_logits.argmax())
            if chosen in eos or plain in eos:
                finish = "stop"
                break
            if chosen != plain and has_stop([*emitted, plain]):
                finish = "stop"
                break
            emitted.append(chosen)
            if has_stop(emitted):
                finish = "stop"
                break
            pos_logits, pos_cache = _last_logits(model, [chosen], pos_cache)
            neg_logits, neg_cache = _last_logits(model, [chosen], neg_cache)
    raw = text(emitted)
    cut = min([raw.find(s) for s in stop if s in raw], default=len(raw))
    return Decoded(emitted, finish, raw[:cut].strip())


def assert_equals_contrastive_loop(
    results: Sequence[Any], requests: Sequence[Any], model: Any, tokenizer: Any, min_tokens: int
) -> int:
    """Each engine result (a DecodeResult) is exactly `contrastive_decode` of its request (a
    DecodeRequest): tokens, finish reason and text. Returns the tokens compared, at least
    `min_tokens`, so short or empty outputs cannot make the comparison vacuous."""
    compared = 0
    for result, request in zip(results, requests, strict=True):
        assert request.neg_prompt is not None
        s = request.settings
        want = contrastive_decode(
            model,
            tokenizer,
            request.pos_prompt,
            request.neg_prompt,
            lam=s.lam,
            alpha=s.alpha,
            temperature=s.temperature,
            max_new_tokens=s.max_new_tokens,
            stop=s.stop,
        )
        got = (result.token_ids, result.finish_reason.value, result.text)
        assert got == (want.token_ids, want.finish, want.text), (
            f"oracle differs: {request.request_id}"
        )
        compared += len(want.token_ids)
    assert compared >= min_tokens, f"only {compared} tokens compared"
    return compared
