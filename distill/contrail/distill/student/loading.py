"""Loading a student of either shape: a decoder-only causal LM (SmolLM2, Llama, ...) or an
encoder-decoder (T5, BART, ...), told apart by its config's `is_encoder_decoder`.

The two shapes see a row differently (examples.py): a causal student reads prompt and target as
one sequence; a seq2seq student's encoder reads the question and its decoder the target. Training
and evaluation both take the shape from here, so they cannot disagree."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def is_seq2seq(folder: str | Path) -> bool:
    from transformers import AutoConfig

    return bool(AutoConfig.from_pretrained(folder).is_encoder_decoder)


def load_model(folder: str | Path, *, dtype: str | None = None) -> Any:
    """The model in `folder` with its language-model head, in `dtype` (None: as saved)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if is_seq2seq(folder) else AutoModelForCausalLM
    if dtype is None:
        return auto.from_pretrained(folder)
    return auto.from_pretrained(folder, dtype=getattr(torch, dtype))


def decoder_start(model: Any) -> int | None:
    """The token a seq2seq model's decoder starts from; None for a causal model."""
    if not model.config.is_encoder_decoder:
        return None
    start = model.config.decoder_start_token_id
    if start is None:
        raise ValueError("the seq2seq student's config has no decoder_start_token_id")
    return int(start)


__all__ = ["decoder_start", "is_seq2seq", "load_model"]
