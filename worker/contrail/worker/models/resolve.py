"""From a name, a folder or a Hub id to a model folder ready to load, and the
``contrail models prepare`` entry point."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from contrail.worker.models.cache import MARKER
from contrail.worker.models.hub import fetch, parse_hub_id
from contrail.worker.models.hub import resolve as resolve_hub
from contrail.worker.models.smollm2 import DEFAULT_MODEL, smollm2_folder, smollm2_path
from contrail.worker.models.tiny import TINY_MODEL, tiny_folder, tiny_model_path


@dataclass(frozen=True)
class ModelSpec:
    """A model ready to load: a display name and a Hugging Face folder."""

    name: str
    path: Path


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

    Raises `contrail.worker.models.hub.HubError` when a Hub model cannot be had."""
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
            target: Path | None = smollm2_folder(cache_dir)
        elif alias == TINY_MODEL:
            target = tiny_folder(cache_dir)
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
