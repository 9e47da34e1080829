"""The SCOTT paper's released contrastive decoding procedure, re-implemented as a baseline.

Faithful to `contrastive_decoding()` in the authors' release (wangpf3/consistent-CoT-distillation,
contrastive_decoding_rationalization.py):

- transformers, **one item at a time**;
- **two separate forward passes per step**, C+ then C-, each with its **own KV cache**
  (`past_key_values1` / `past_key_values2`); the first step feeds the whole prompt (full logits,
  as the release does), later steps feed the last token; the attention mask is all ones over the
  growing sequence, rebuilt every step; the new token is appended with `torch.cat`;
- log-softmax of C+ logits / temperature, log-softmax of C- logits, **greedy on the score**
  `logp+ - lambda * logp-`;
- **the stop rule**: the release stops when the plain argmax under C+ is the stop token, checked
  *before* the C- forward pass of that step, or when the chosen token is. It compares one token id
  ("\\n\\nQ"'s second-to-last id); docs/METHOD.md explains why that rule must be decided on
  text, so the baseline uses contrail's `StopRule` (the same decision every contrail engine
  makes), keeping the release's order: an EOS plain argmax ends the item before the C- pass.
  This keeps the work equal: the baseline writes the same tokens as the pair engine (the engine
  benchmark checks it).

Run alone: `python bench/paper_baseline.py --model tiny --items 8` prints rationales/s.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from contrail.worker.engine.base import DecodeRequest
from contrail.worker.engine.stopping import Action, StopRule, token_texts


class PaperBaseline:
    """Decodes requests one at a time exactly as the paper's release does (see module doc)."""

    def __init__(self, model: Any, tokenizer: Any, eos_ids: Sequence[int]) -> None:
        self.model = model
        self.tokenizer = tokenizer
        vocab = int(model.config.vocab_size)
        self.texts = token_texts(tokenizer, min(len(tokenizer), vocab))
        self.eos_ids = frozenset(int(e) for e in eos_ids)
        self._rules: dict[tuple[str, ...], StopRule] = {}

    def rule(self, stop: Sequence[str]) -> StopRule:
        key = tuple(stop)
        if key not in self._rules:
            self._rules[key] = StopRule.build(self.texts, self.eos_ids, key)
        return self._rules[key]

    @torch.no_grad()
    def decode(self, request: DecodeRequest) -> list[int]:
        """The rationale's token ids (without the stop token)."""
        assert request.neg_prompt is not None, "the paper's procedure is contrastive only"
        s = request.settings
        rule = self.rule(s.stop)
        inputs1 = self.tokenizer(request.pos_prompt, return_tensors="pt")
        generated1: torch.Tensor = inputs1.input_ids
        input_length1 = generated1.shape[1]
        past_key_values1: Any = None
        inputs2 = self.tokenizer(request.neg_prompt, return_tensors="pt")
        generated2: torch.Tensor = inputs2.input_ids
        past_key_values2: Any = None
        tail = ""
        for _step in range(s.max_new_tokens):
            # get probs given by the original teacher (C+)
            attention_mask1 = generated1.new_ones(generated1.shape)
            outputs1 = self.model(
                input_ids=generated1 if past_key_values1 is None else generated1[:, -1:],
                past_key_values=past_key_values1,
                attention_mask=attention_mask1,
            )
            logits1 = outputs1.logits[:, -1, :]
            past_key_values1 = outputs1.past_key_values
            prob1 = F.log_softmax(logits1 / s.temperature, dim=-1)
            candidate = int(prob1.argmax(dim=-1)[0])
            if candidate in self.eos_ids:
                break

            # get probs given by the "hallucinating" teacher (C-)
            attention_mask2 = generated2.new_ones(generated2.shape)
            outputs2 = self.model(
                input_ids=generated2 if past_key_values2 is None else generated2[:, -1:],
                past_key_values=past_key_values2,
                attention_mask=attention_mask2,
            )
            logits2 = outputs2.logits[:, -1, :]
            past_key_values2 = outputs2.past_key_values
            prob2 = F.log_softmax(logits2, dim=-1)

            debiased = prob1 - s.lam * prob2
            next_token = debiased.argmax(dim=-1, keepdim=True)
            action, tail = rule.decide(tail, int(next_token[0]), candidate)
            if action is Action.STOP:
                break
            generated1 = torch.cat((generated1, next_token), dim=1)
            generated2 = torch.cat((generated2, next_token), dim=1)
            if action is Action.EMIT_AND_FINISH:
                break
        return [int(t) for t in generated1[0, input_length1:].tolist()]


def main() -> int:
    import benchlib  # noqa: F401 - puts the repository on sys.path
    from benchlib import bench_requests
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from contrail.worker.models import resolve_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--items", type=int, default=8, help="items per task (StrategyQA, CSQA)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # torch loaded before benchlib
    spec = resolve_model(args.model)
    tok: Any = AutoTokenizer.from_pretrained(spec.path)
    model: Any = AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch.float32)
    model.eval()
    baseline = PaperBaseline(model, tok, [tok.eos_token_id])
    requests = bench_requests(args.items, max_new_tokens=args.max_new_tokens)
    start = time.perf_counter()
    tokens = sum(len(baseline.decode(r)) for r in requests)
    took = time.perf_counter() - start
    print(f"{len(requests)} rationales, {tokens} tokens in {took:.2f} s: ", end="")
    print(f"{len(requests) / took:.3f} rationales/s, {tokens / took:.1f} tokens/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
