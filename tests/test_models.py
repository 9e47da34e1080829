"""Model preparation: the tiny test model and the SmolLM2 conversion."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from contrail.worker.models import (
    DEFAULT_MODEL,
    MARKER,
    build_tiny_model,
    resolve_model,
    tiny_model_path,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MARKER
    }


def test_tiny_model_is_deterministic(tmp_path: Path) -> None:
    texts = ["Q: Is the sky blue?\nA: The answer is yes. The sky looks blue.\n\n"] * 20
    a = build_tiny_model(tmp_path / "a", texts)
    b = build_tiny_model(tmp_path / "b", texts)
    assert _digests(a) == _digests(b)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(_digests(a))


def test_tiny_model_loads_and_generates(tiny_model_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert model.config.head_dim == 32  # vLLM CPU supports 32, 64, ...
    assert model.dtype == torch.float32
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == model.config.eos_token_id
    ids = tok("Q: Can a dog swim?\nA: The answer is yes.")["input_ids"]
    assert tok.eos_token_id not in ids  # no BOS/EOS added, like SmolLM2
    assert tok.decode(ids) == "Q: Can a dog swim?\nA: The answer is yes."
    out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=5, eos_token_id=None)
    assert out.shape[1] == len(ids) + 5


def test_tiny_cache_is_reused(tiny_model_path: Path, model_cache_dir: Path) -> None:
    assert (tiny_model_path / MARKER).is_file()
    assert tiny_model_path_again(model_cache_dir) == tiny_model_path
    assert resolve_model("tiny", model_cache_dir).path == tiny_model_path
    assert resolve_model(str(tiny_model_path)).path == tiny_model_path.resolve()


def tiny_model_path_again(cache: Path) -> Path:
    return tiny_model_path(cache)


def test_resolve_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        resolve_model("no-such-model-or-folder")


@pytest.mark.slow
def test_smollm2_conversion_reloads_and_generates(
    smollm2_path: Path, model_cache_dir: Path
) -> None:
    assert (smollm2_path / MARKER).is_file()
    assert resolve_model(DEFAULT_MODEL, model_cache_dir).path == smollm2_path
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    assert model.config.vocab_size == 49152
    assert model.config.head_dim == 64
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos_ids
    prompt = "Q: Is water wet?\nA: The answer is yes."
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, do_sample=False, max_new_tokens=12)
    text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert len(text.strip()) > 0
