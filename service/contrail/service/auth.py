"""API keys: bearer tokens mapped to tenants, kept only as SHA-256 hashes.

Sources (both may be used):
- ``CONTRAIL_API_KEYS="tenant-a:key1,tenant-b:key2"`` (plain keys, hashed when loaded);
- ``CONTRAIL_API_KEYS_FILE``: one key per line, ``<tenant> sha256:<hex digest>`` (preferred) or
  ``<tenant>:<plain key>``; blank lines and ``#`` comments are ignored.

The file is re-read when it changes (checked at most once per `check_interval_s`), so keys are
added, rotated and revoked without a restart. A file that no longer parses leaves the last good
table in force (and is logged): a typo must not lock every tenant out. At start-up any problem is
fatal instead.

Rules: a tenant name is 1-64 characters of ``A-Z a-z 0-9 . _ -`` starting with a letter or digit
(it is part of Redis keys, where ``:`` separates fields); a plain key has at least
`MIN_KEY_LENGTH` characters; a digest is 64 hex digits; one key belongs to one tenant.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("contrail.service.auth")

MIN_KEY_LENGTH = 16
TENANT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_TENANT_RE = re.compile(TENANT_PATTERN)
_DIGEST_RE = re.compile(r"[0-9a-fA-F]{64}")


class KeyConfigError(ValueError):
    """The configured keys are invalid (the message names the entry, never the key)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def valid_tenant(name: str) -> bool:
    return _TENANT_RE.fullmatch(name) is not None


def _parse_entry(entry: str, where: str) -> tuple[str, str] | None:
    """(digest, tenant) of one entry; None for a blank line or a comment."""
    entry = entry.strip()
    if not entry or entry.startswith("#"):
        return None
    parts = entry.split()
    if len(parts) == 2 and parts[1].startswith("sha256:"):
        tenant, digest = parts[0], parts[1][len("sha256:") :]
        if not _DIGEST_RE.fullmatch(digest):
            raise KeyConfigError(f"{where}: the sha256 digest must be 64 hex digits")
        digest = digest.lower()
    else:
        tenant, sep, key = entry.partition(":")
        tenant = tenant.strip()
        if not sep or not tenant or not key:
            raise KeyConfigError(f"{where}: want 'tenant:key' or 'tenant sha256:<hex>'")
        if len(key) < MIN_KEY_LENGTH:
            raise KeyConfigError(
                f"{where}: the key of tenant {tenant!r} is shorter than {MIN_KEY_LENGTH} characters"
            )
        digest = hash_key(key)
    if not valid_tenant(tenant):
        raise KeyConfigError(
            f"{where}: tenant name {tenant!r} must match {TENANT_PATTERN} (no ':' or spaces)"
        )
    return digest, tenant


def parse_keys(entries: Iterable[tuple[str, str]]) -> dict[str, str]:
    """sha256(key) -> tenant from (where, entry) pairs; raises KeyConfigError."""
    table: dict[str, str] = {}
    for where, entry in entries:
        parsed = _parse_entry(entry, where)
        if parsed is None:
            continue
        digest, tenant = parsed
        if table.get(digest, tenant) != tenant:
            raise KeyConfigError(f"{where}: this key is already given to tenant {table[digest]!r}")
        table[digest] = tenant
    return table


def _env_entries(env_keys: str) -> list[tuple[str, str]]:
    return [(f"CONTRAIL_API_KEYS entry {i}", e) for i, e in enumerate(env_keys.split(","), 1)]


def _file_entries(path: Path, text: str) -> list[tuple[str, str]]:
    return [(f"{path} line {i}", line) for i, line in enumerate(text.splitlines(), 1)]


@dataclass(frozen=True)
class _FileState:
    """What identifies one version of the keys file (an atomic rename changes the inode)."""

    mtime_ns: int
    ctime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> _FileState:
        st = os.stat(path)
        return cls(st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


class ApiKeys:
    """The key table of a running API; `tenant` re-reads the keys file when it changed."""

    def __init__(
        self,
        env_keys: str,
        keys_file: Path | None,
        *,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_reload_error: Callable[[], None] | None = None,
    ) -> None:
        self.env_keys = env_keys
        self.keys_file = keys_file
        self.check_interval_s = check_interval_s
        self.clock = clock
        self.on_reload_error = on_reload_error
        self._env_table = parse_keys(_env_entries(env_keys))
        self._file_state: _FileState | None = None
        self._next_check = 0.0
        self.table = self._merged(self._read_file())  # errors at start-up are fatal

    def _read_file(self) -> dict[str, str]:
        if self.keys_file is None:
            return {}
        # Remembered before parsing, so a bad version is reported once, not at every check.
        self._file_state = _FileState.of(self.keys_file)
        return parse_keys(_file_entries(self.keys_file, self.keys_file.read_text()))

    def _merged(self, file_table: dict[str, str]) -> dict[str, str]:
        table = dict(self._env_table)
        for digest, tenant in file_table.items():
            if table.get(digest, tenant) != tenant:
                raise KeyConfigError(
                    f"{self.keys_file}: a key is given to {tenant!r} there and to "
                    f"{table[digest]!r} in CONTRAIL_API_KEYS"
                )
            table[digest] = tenant
        self._next_check = self.clock() + self.check_interval_s
        return table

    def refresh(self) -> None:
        """Re-read the keys file if it changed since it was last read."""
        if self.keys_file is None or self.clock() < self._next_check:
            return
        self._next_check = self.clock() + self.check_interval_s
        try:
            if _FileState.of(self.keys_file) == self._file_state:
                return
            self.table = self._merged(self._read_file())
            log.info("API keys reloaded from %s: %d keys", self.keys_file, len(self.table))
        except (OSError, UnicodeDecodeError, KeyConfigError) as exc:
            log.error("API keys file not reloaded, the previous keys stay in force: %s", exc)
            if self.on_reload_error is not None:
                self.on_reload_error()

    def tenant(self, key: str) -> str | None:
        self.refresh()
        return self.table.get(hash_key(key))


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode(), expected.encode())
