"""API keys: bearer tokens mapped to tenants, kept only as SHA-256 hashes.

Sources (both may be used):
- ``CONTRAIL_API_KEYS="tenant-a:key1,tenant-b:key2"`` (plain keys, hashed when loaded);
- ``CONTRAIL_API_KEYS_FILE``: one key per line, ``<tenant> sha256:<hex digest>`` (preferred) or
  ``<tenant>:<plain key>``; blank lines and ``#`` comments are ignored.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _parse_entry(entry: str) -> tuple[str, str] | None:
    entry = entry.strip()
    if not entry or entry.startswith("#"):
        return None
    parts = entry.split()
    if len(parts) == 2 and parts[1].startswith("sha256:"):
        return parts[1][len("sha256:") :].lower(), parts[0]
    tenant, sep, key = entry.partition(":")
    if not sep or not tenant or not key:
        raise ValueError("bad API key entry (want 'tenant:key' or 'tenant sha256:<hex>')")
    return hash_key(key), tenant.strip()


@lru_cache(maxsize=8)
def load_keys(env_keys: str, keys_file: Path | None) -> dict[str, str]:
    """sha256(key) -> tenant."""
    table: dict[str, str] = {}
    for entry in env_keys.split(","):
        parsed = _parse_entry(entry)
        if parsed:
            table[parsed[0]] = parsed[1]
    if keys_file is not None:
        for line in keys_file.read_text().splitlines():
            parsed = _parse_entry(line)
            if parsed:
                table[parsed[0]] = parsed[1]
    return table


def tenant_for(key: str, env_keys: str, keys_file: Path | None) -> str | None:
    return load_keys(env_keys, keys_file).get(hash_key(key))
