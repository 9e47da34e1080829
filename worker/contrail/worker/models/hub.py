"""Teachers by Hugging Face Hub id (``org/name``, optionally ``org/name@revision``), resolved
through huggingface_hub's own cache, so HF_HOME / HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT and
HF_HUB_OFFLINE mean what they mean to every other tool.

A worker takes a cached snapshot without asking the network (`local_snapshot`), and fetches
only what is not cached yet; `contrail models prepare` fetches (and refreshes a branch) ahead of
time. Every failure is a `HubError` with a message that says what to do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# Weights in other formats than the ones engines load would only cost download time and disk.
IGNORE_PATTERNS = ["*.gguf", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "*.ot", "original/*"]

_HUB_ID = re.compile(
    r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+)(?:@(?P<revision>[A-Za-z0-9._/-]+))?$"
)


class HubError(Exception):
    """A Hub model that cannot be had: not cached while offline, no network, not found."""


@dataclass(frozen=True)
class HubId:
    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo if self.revision is None else f"{self.repo}@{self.revision}"


def parse_hub_id(name: str) -> HubId | None:
    """``org/name[@revision]`` as a HubId; None for anything else (a local name or path)."""
    match = _HUB_ID.match(name.strip())
    if match is None:
        return None
    return HubId(match["repo"], match["revision"])


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def local_snapshot(hub_id: HubId) -> Path | None:
    """The cached snapshot folder of this id and revision, without any network access."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(
            hub_id.repo,
            revision=hub_id.revision,
            local_files_only=True,
            ignore_patterns=IGNORE_PATTERNS,
        )
    except LocalEntryNotFoundError:
        return None
    return Path(str(path))


def fetch(hub_id: HubId) -> Path:
    """Download (or, offline, look up) the snapshot into the Hub cache; its folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = snapshot_download(
            hub_id.repo, revision=hub_id.revision, ignore_patterns=IGNORE_PATTERNS
        )
    except GatedRepoError:
        raise HubError(
            f"{hub_id.repo} is gated on the Hugging Face Hub: accept its terms with your account "
            "and set HF_TOKEN"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"{hub_id.repo} has no revision {hub_id.revision!r}") from None
    except RepositoryNotFoundError:
        raise HubError(
            f"no model {hub_id.repo!r} on the Hugging Face Hub (or it is private: set HF_TOKEN)"
        ) from None
    except LocalEntryNotFoundError as exc:
        raise HubError(_not_cached(hub_id, exc)) from None
    return Path(str(path))


def _not_cached(hub_id: HubId, exc: Exception) -> str:
    where = f"the Hugging Face cache ({_cache_dir()})"
    if _offline():
        return (
            f"{hub_id} is not in {where} and HF_HUB_OFFLINE=1 forbids fetching it: run "
            f"`contrail models prepare {hub_id}` where the Hub can be reached, with the same "
            "HF_HOME, or copy that cache here"
        )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    cause = str(exc).split("\n", 1)[0]
    return (
        f"cannot fetch {hub_id} from the Hugging Face Hub ({endpoint}): no network access? "
        f"({cause}). It is not in {where} either: fetch it where the network is "
        f"(`contrail models prepare {hub_id}`) with the same HF_HOME, or copy that cache here"
    )


def resolve(hub_id: HubId) -> Path:
    """A worker's resolution: the cached snapshot, else a fetch (which fails clearly offline)."""
    return local_snapshot(hub_id) or fetch(hub_id)
