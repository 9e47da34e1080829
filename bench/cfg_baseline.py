"""transformers' classifier-free guidance `generate`, batched with left padding, as a contender.

`generate(guidance_scale=1/(1-lambda), negative_prompt_ids=C-, negative_prompt_attention_mask=..)`
ranks tokens like contrail's contrastive score with alpha 0 (docs/METHOD.md: the CFG oracle).
transformers runs the negative prompt inside its `UnbatchedClassifierFreeGuidanceLogitsProcessor`
with a second KV cache; here the items go `batch_size` at a time, C+ and C- each left padded.
Stopping is what `generate` offers: EOS, `stop_strings` and max_new_tokens (it has no "plain
argmax" stop rule, so its rationales may run longer than the pair engine's; the benchmark reports
the tokens it wrote).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from contrail.worker.engine.base import DecodeRequest


class CfgBaseline:
    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        eos = tokenizer.eos_token_id
        self.eos_id = int(eos)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_id

    def _left_pad(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for r, row in enumerate(ids):
            input_ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[r, width - len(row) :] = 1
        return input_ids, mask

    def _count(self, new_tokens: list[int]) -> int:
        n = 0
        for t in new_tokens:
            if t in (self.eos_id, self.pad_id):
                break
            n += 1
        return n

    @torch.inference_mode()
    def generate(self, requests: Sequence[DecodeRequest]) -> list[list[int]]:
        """Token ids of each request's rationale (cut at EOS / padding)."""
        out: list[list[int]] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            s = chunk[0].settings
            pos, pos_mask = self._left_pad([r.pos_prompt for r in chunk])
            neg, neg_mask = self._left_pad([r.neg_prompt or "" for r in chunk])
            gen = self.model.generate(
                pos,
                attention_mask=pos_mask,
                guidance_scale=1.0 / (1.0 - s.lam),
                negative_prompt_ids=neg,
                negative_prompt_attention_mask=neg_mask,
                do_sample=False,
                max_new_tokens=s.max_new_tokens,
                stop_strings=list(s.stop),
                tokenizer=self.tokenizer,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
            )
            for row in gen[:, pos.shape[1] :].tolist():
                out.append([int(t) for t in row[: self._count(row)]])
        return out
