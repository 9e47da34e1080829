"""The tiny test model: a random 2-layer Llama with a locally trained byte-level BPE tokenizer,
built deterministically (the same bytes on every build of the same corpus)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from contrail.worker.models.cache import (
    build_atomically,
    cache_root,
    portable_tokenizer_class,
    transformers_lib,
)

TINY_MODEL = "tiny"
# Bump when the tiny model's recipe changes (it is part of the cache key).
TINY_VERSION = 2
TINY_SEED = 1234
TINY_VOCAB = 4096
TINY_SPECIAL = "<|endoftext|>"
# Large enough that next-token distributions are peaked (top-1/top-2 log-prob gaps are mostly
# well above float noise), so two correct implementations rarely disagree on a near-tie.
TINY_INITIALIZER_RANGE = 0.3


_WORDS = (  # noqa: SIM905 - a word list reads better as text
    "the a an of to in is was for on that with as by at from it be are this which or "
    "have has had not but they you he she we his her their its one all were there been "
    "can would will more when who what where why how if so do does did many some most "
    "other than then them these those into only about over after before because through "
    "during also such people time year city country water animal plant food music river "
    "state world war school book language body light heat air earth sun moon star tree "
    "fish bird dog cat horse car ship train house church king queen president army "
    "company game team sport money gold iron salt sugar milk bread coffee tea wine paper "
    "color red blue green white black small large old new long short high low hot cold "
    "fast slow first last many few make made use used live lived eat eaten grow grew "
    "know known find found give given think see seen show shown call called play played "
    "need needed help helped move moved usually often never always sometimes typically "
    "cannot could should might must answer question true false yes no statement because "
    "therefore however although human history science island mountain ocean desert "
    "forest winter summer season month"
).split()


def _builtin_corpus(n_paragraphs: int = 1500, seed: int = 0) -> list[str]:
    """Deterministic English-like text in the few-shot format (Q:/A:/blank lines)."""
    rng = random.Random(seed)

    def sentence(lo: int, hi: int) -> str:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))]
        text = " ".join(words)
        return text[0].upper() + text[1:]

    out: list[str] = []
    for i in range(n_paragraphs):
        kind = i % 3
        q = sentence(6, 14) + "?"
        rationale = " ".join(sentence(5, 16) + "." for _ in range(rng.randint(1, 3)))
        if kind == 0:
            out.append(f"Q: {q}\nA: The answer is {rng.choice(['yes', 'no'])}. {rationale}\n\n")
        elif kind == 1:
            choices = "\n".join(f"({c}) {sentence(1, 3).lower()}" for c in "abcde")
            ans = sentence(1, 3).lower()
            out.append(
                f"Q: {q}\nAnswer Choices:\n{choices}\nA: The answer is {ans}. {rationale}\n\n"
            )
        else:
            claim = sentence(6, 14) + "."
            verdict = rng.choice(["true", "false"])
            out.append(f"Q: {claim}\nA: The statement is {verdict}. {rationale}\n\n")
    return out


def _jsonl_texts(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in sorted(value):
            yield from _jsonl_texts(value[key])
    elif isinstance(value, list):
        for item in value:
            yield from _jsonl_texts(item)


def default_tiny_corpus() -> list[str]:
    """The built-in corpus plus every string in the package's demonstration pools
    (``contrail.core``'s ``data/*.jsonl``, files and keys in sorted order) when they exist."""
    texts = _builtin_corpus()
    data_dir = Path(str(resources.files("contrail.core").joinpath("data")))
    for file in sorted(data_dir.glob("*.jsonl")):
        for line in file.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            texts.extend(_jsonl_texts(record))
    return texts


def corpus_key(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:12]


def _train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tf = transformers_lib()

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[TINY_SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=TINY_SPECIAL,
        eos_token=TINY_SPECIAL,
        pad_token=TINY_SPECIAL,
        unk_token=TINY_SPECIAL,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = TINY_VOCAB,
    initializer_range: float = TINY_INITIALIZER_RANGE,
    seed: int = TINY_SEED,
) -> Path:
    """Write a random LlamaForCausalLM (hidden 128, 2 layers, 4 heads of 32, fp32) and its
    byte-level BPE tokenizer (trained on ``texts``, default `default_tiny_corpus`) to ``out_dir``.

    Deterministic: the same arguments give the same bytes. The tokenizer adds no BOS token, like
    SmolLM2's; ``<|endoftext|>`` is bos/eos/pad/unk.
    """
    import torch

    tf = transformers_lib()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = list(texts) if texts is not None else default_tiny_corpus()
    tokenizer = _train_tokenizer(corpus, vocab_size)
    special_id = int(tokenizer.convert_tokens_to_ids(TINY_SPECIAL))
    config = tf.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=2048,
        initializer_range=initializer_range,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=special_id,
        eos_token_id=special_id,
        pad_token_id=special_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = tf.GenerationConfig(
        bos_token_id=special_id, eos_token_id=special_id, pad_token_id=special_id
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    portable_tokenizer_class(out)
    return out


def tiny_folder(cache_dir: str | os.PathLike[str] | None = None, key: str | None = None) -> Path:
    """Where the tiny model of this recipe and corpus lives in the cache (built or not)."""
    key = key if key is not None else corpus_key(default_tiny_corpus())
    return cache_root(cache_dir) / f"tiny-llama-v{TINY_VERSION}-{key}"


def tiny_model_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached tiny model (built on first use, ~seconds)."""
    corpus = default_tiny_corpus()
    key = corpus_key(corpus)
    final = tiny_folder(cache_dir, key)
    info = {"model": TINY_MODEL, "version": TINY_VERSION, "corpus": key, "built": time.time()}

    def build(tmp: Path) -> None:
        build_tiny_model(tmp, corpus)

    return build_atomically(final, build, info)
