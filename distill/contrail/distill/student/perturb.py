"""The perturbed-rationale test of a student (the reference release's evaluation): a share of the
tokens of the student's own rationale is replaced by random tokens, the corrupted rationale is
forced, and the answer read after it. The more the answer depends on the rationale, the more
accuracy drops.

The positions and the replacement tokens are drawn from a generator seeded by SHA-256 of (seed,
item id), like every random choice in contrail: the same seed corrupts the same item the same
way on any machine and in any order of items.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

import numpy as np

DEFAULT_FRACTION: Final = 0.5


def _rng(seed: int, item_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"perturb-rationale\x1f{seed}\x1f{item_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def perturb_tokens(
    tokens: Sequence[int],
    *,
    vocab_size: int,
    item_id: str,
    seed: int,
    fraction: float = DEFAULT_FRACTION,
    keep: frozenset[int] = frozenset(),
) -> list[int]:
    """`tokens` with round(fraction * n) positions replaced by tokens drawn uniformly from the
    vocabulary minus `keep` (special tokens: an end-of-text in the middle would end the
    rationale rather than corrupt it)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must be in [0, 1]")
    out = list(tokens)
    n = round(fraction * len(out))
    if n == 0:
        return out
    rng = _rng(seed, item_id)
    positions = rng.choice(len(out), size=n, replace=False)
    for pos in positions:
        token = int(rng.integers(0, vocab_size))
        while token in keep:
            token = int(rng.integers(0, vocab_size))
        out[int(pos)] = token
    return out


__all__ = ["DEFAULT_FRACTION", "perturb_tokens"]
