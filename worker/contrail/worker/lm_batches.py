"""Left-padded batches for causal LMs: the reference engine's prefill and the LAS simulator's
readers (contrail.distill) share this one builder."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def left_padded(
    seqs: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, position ids) of `seqs` padded on the left to the longest, so
    every sequence's last token sits at index -1; positions count real tokens only (0 on
    padding), as the sequence alone would see them."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions
