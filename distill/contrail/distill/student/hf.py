"""A student model folder (what `contrail train` writes under `model/`, or any causal LM) behind
the `evaluate.Student` protocol: greedy generation, option scoring and rationale perturbation
with its own tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contrail.distill.student.perturb import DEFAULT_FRACTION, perturb_tokens


class HFStudent:
    def __init__(
        self,
        folder: Path,
        *,
        device: str = "cpu",
        max_new_tokens: int = 96,
        batch_size: int = 8,
        fraction: float = DEFAULT_FRACTION,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(folder)
        model: Any = AutoModelForCausalLM.from_pretrained(folder)
        self.model: Any = model.to(device).eval()
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.fraction = fraction
        self.eos = self.tokenizer.eos_token_id
        self.pad = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        )

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy continuations, one prompt at a time (no padding can change a token)."""
        import torch

        out = []
        for prompt in prompts:
            ids = torch.tensor([self._ids(prompt)], device=self.device)
            with torch.no_grad():
                seq = self.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    eos_token_id=self.eos,
                    pad_token_id=self.pad,
                )
            out.append(self.tokenizer.decode(seq[0, ids.shape[1] :], skip_special_tokens=True))
        return out

    def choose(self, prefixes: Sequence[str], options: Sequence[Sequence[str]]) -> list[int]:
        """The option with the highest log-probability (its tokens and end-of-text) after each
        prefix."""
        rows = [
            (k, self._ids(prefix), [*self._ids(f" {opt}"), self.eos])
            for k, (prefix, opts) in enumerate(zip(prefixes, options, strict=True))
            for opt in opts
        ]
        scores = self._score(rows)
        picks = []
        start = 0
        for opts in options:
            part = scores[start : start + len(opts)]
            picks.append(max(range(len(opts)), key=part.__getitem__))
            start += len(opts)
        return picks

    def _score(self, rows: Sequence[tuple[int, list[int], list[int]]]) -> list[float]:
        import torch

        out: list[float] = []
        for lo in range(0, len(rows), self.batch_size):
            batch = rows[lo : lo + self.batch_size]
            width = max(len(p) + len(c) for _, p, c in batch)
            ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (_, p, c) in enumerate(batch):
                ids[i, : len(p) + len(c)] = torch.tensor(p + c)
                mask[i, : len(p) + len(c)] = 1
            with torch.no_grad():
                logits = self.model(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
                ).logits
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for i, (_, p, c) in enumerate(batch):
                positions = range(len(p) - 1, len(p) + len(c) - 1)
                out.append(sum(float(logp[i, t, tok]) for t, tok in zip(positions, c, strict=True)))
        return out

    def perturb(self, rationale: str, item_id: str, seed: int) -> str:
        special = frozenset(int(t) for t in self.tokenizer.all_special_ids)
        tokens = perturb_tokens(
            self._ids(rationale),
            vocab_size=len(self.tokenizer),
            item_id=item_id,
            seed=seed,
            fraction=self.fraction,
            keep=special,
        )
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))


__all__ = ["HFStudent"]
