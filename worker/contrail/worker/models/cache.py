"""The prepared-model cache: where folders live, and how one is built so that a reader never sees
it half-written (a temporary sibling, a marker file written last, one rename)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = ".contrail-model.json"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where prepared models live: ``cache_dir``, else ``$CONTRAIL_CACHE_DIR/models``, else
    ``~/.cache/contrail/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().absolute()
    env = os.environ.get("CONTRAIL_CACHE_DIR")
    if env:
        return Path(env).expanduser().absolute() / "models"
    return Path.home() / ".cache" / "contrail" / "models"


def transformers_lib() -> Any:
    """transformers, imported lazily (it is heavy) and untyped here on purpose: its stubs do not
    describe the dynamic config/model classes used below."""
    return importlib.import_module("transformers")


def is_complete(path: Path, version: int | None = None) -> bool:
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


def build_atomically(final: Path, build: Callable[[Path], None], info: dict[str, Any]) -> Path:
    """Build into a temporary sibling folder, write the marker last, rename into place."""
    version = info.get("version")
    if is_complete(final, version):
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
        if final.exists() and not is_complete(final, version):
            # a leftover of an interrupted build that still had the final name: replace it
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final, version):  # someone else won the race, or a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def portable_tokenizer_class(folder: Path) -> None:
    """transformers 5 writes ``TokenizersBackend``, which transformers 4 cannot resolve; the
    classic name loads the same tokenizer.json in both."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):  # loader state, not tokenizer settings
        config.pop(key, None)
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
