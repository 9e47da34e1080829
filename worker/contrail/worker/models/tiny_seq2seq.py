"""The tiny encoder-decoder test model: a random 2+2-layer T5 with the tiny Llama's byte-level BPE
tokenizer, for the seq2seq student tests. No package ships a pretrained seq2seq model (T5, BART)
and nothing may be downloaded at run time, so this is what seq2seq code runs on here.

Built deterministically, like the tiny Llama (`tiny.py`), into the same cache."""

from __future__ import annotations

import os
import time
from pathlib import Path

from contrail.worker.models.cache import (
    build_atomically,
    cache_root,
    portable_tokenizer_class,
    transformers_lib,
)
from contrail.worker.models.tiny import (
    TINY_SEED,
    TINY_SPECIAL,
    TINY_VOCAB,
    _train_tokenizer,
    corpus_key,
    default_tiny_corpus,
)

# Bump when the recipe changes (it is part of the cache key).
TINY_SEQ2SEQ_VERSION = 1


def build_tiny_seq2seq(out_dir: str | os.PathLike[str], *, seed: int = TINY_SEED) -> Path:
    """Write a random T5ForConditionalGeneration (d_model 64, 2 encoder and 2 decoder layers, 4
    heads of 16, fp32) and the tiny tokenizer to ``out_dir``. ``<|endoftext|>`` is eos, pad and
    the decoder's start token (T5's convention: decoding starts from pad)."""
    import torch

    tf = transformers_lib()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(default_tiny_corpus(), TINY_VOCAB)
    special = int(tokenizer.convert_tokens_to_ids(TINY_SPECIAL))
    config = tf.T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        feed_forward_proj="relu",
        tie_word_embeddings=False,
        pad_token_id=special,
        eos_token_id=special,
        decoder_start_token_id=special,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.T5ForConditionalGeneration(config).to(torch.float32)
    model.generation_config = tf.GenerationConfig(
        eos_token_id=special, pad_token_id=special, decoder_start_token_id=special
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    portable_tokenizer_class(out)
    return out


def tiny_seq2seq_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached tiny T5 (built on first use, ~seconds)."""
    key = corpus_key(default_tiny_corpus())
    final = cache_root(cache_dir) / f"tiny-t5-v{TINY_SEQ2SEQ_VERSION}-{key}"
    info = {
        "model": "tiny-t5",
        "version": TINY_SEQ2SEQ_VERSION,
        "corpus": key,
        "built": time.time(),
    }

    def build(tmp: Path) -> None:
        build_tiny_seq2seq(tmp)

    return build_atomically(final, build, info)


__all__ = ["build_tiny_seq2seq", "tiny_seq2seq_path"]
