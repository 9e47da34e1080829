"""A student model folder (what `contrail train` writes under `model/`, or any causal or seq2seq
LM) behind the `evaluate.Student` protocol: greedy generation, option scoring and rationale
perturbation with its own tokenizer.

A causal student reads prompt and forced continuation as one text; a seq2seq student's encoder
reads the prompt (with its tokenizer's special tokens, as in training) and its decoder starts from
its start token and is forced through the continuation (examples.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contrail.distill.student.loading import decoder_start, load_model
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
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(folder)
        model: Any = load_model(folder)
        self.model: Any = model.to(device).eval()
        self.start = decoder_start(model)  # None: a causal student
        # The decoder starts as in training: from its start token, with no forced BOS (BART's
        # generation config forces one; the training targets have none).
        self._seq2seq_generation = {
            "decoder_start_token_id": self.start,
            "forced_bos_token_id": None,
        }
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
            causal = self.start is None
            ids = torch.tensor(
                [self._ids(prompt) if causal else self.tokenizer.encode(prompt)], device=self.device
            )
            with torch.no_grad():
                seq = self.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    eos_token_id=self.eos,
                    pad_token_id=self.pad,
                    **({} if causal else self._seq2seq_generation),
                )
            new = seq[0, ids.shape[1] :] if causal else seq[0]  # a decoder's output is all new
            out.append(self.tokenizer.decode(new, skip_special_tokens=True))
        return out

    def choose(
        self,
        prompts: Sequence[str],
        continuations: Sequence[str],
        options: Sequence[Sequence[str]],
    ) -> list[int]:
        """The option with the highest log-probability (its tokens and end-of-text) after each
        prompt and forced continuation."""
        rows = zip(prompts, continuations, options, strict=True)
        scored = [
            (prompt, cont, [*self._ids(f" {opt}"), self.eos])
            for prompt, cont, opts in rows
            for opt in opts
        ]
        scores = self._score(scored) if self.start is None else self._score_seq2seq(scored)
        picks = []
        start = 0
        for opts in options:
            part = scores[start : start + len(opts)]
            picks.append(max(range(len(opts)), key=part.__getitem__))
            start += len(opts)
        return picks

    def _padded(self, seqs: Sequence[list[int]]) -> tuple[Any, Any]:
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _logp(self, **inputs: Any) -> Any:
        import torch

        with torch.no_grad():
            logits = self.model(**inputs).logits
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    def _score(self, rows: Sequence[tuple[str, str, list[int]]]) -> list[float]:
        """A causal student: prompt + continuation tokenized as one text, then the option."""
        out: list[float] = []
        for lo in range(0, len(rows), self.batch_size):
            batch = [(self._ids(p + cont), opt) for p, cont, opt in rows[lo : lo + self.batch_size]]
            ids, mask = self._padded([p + c for p, c in batch])
            logp = self._logp(input_ids=ids, attention_mask=mask)
            for i, (p, c) in enumerate(batch):
                positions = range(len(p) - 1, len(p) + len(c) - 1)
                out.append(sum(float(logp[i, t, tok]) for t, tok in zip(positions, c, strict=True)))
        return out

    def _score_seq2seq(self, rows: Sequence[tuple[str, str, list[int]]]) -> list[float]:
        """A seq2seq student: the prompt encoded; the decoder from its start token through the
        continuation, then the option (decoder position t predicts target token t)."""
        assert self.start is not None
        out: list[float] = []
        for lo in range(0, len(rows), self.batch_size):
            batch = rows[lo : lo + self.batch_size]
            enc, enc_mask = self._padded([self.tokenizer.encode(p) for p, _, _ in batch])
            given = [self._ids(cont) for _, cont, _ in batch]
            targets = [g + opt for g, (_, _, opt) in zip(given, batch, strict=True)]
            dec, dec_mask = self._padded([[self.start, *t[:-1]] for t in targets])
            logp = self._logp(
                input_ids=enc,
                attention_mask=enc_mask,
                decoder_input_ids=dec,
                decoder_attention_mask=dec_mask,
            )
            for i, (g, t) in enumerate(zip(given, targets, strict=True)):
                out.append(sum(float(logp[i, pos, t[pos]]) for pos in range(len(g), len(t))))
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
