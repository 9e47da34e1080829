"""Can a LoRA-tuned SmolLM2-135M pass the LAS validation where the linear head does not?

The committed simulator heads read SmolLM2-135M's layer-16 state with a logistic head; on
StrategyQA dev they cannot tell human facts from shuffled ones (docs/quality/VALIDATION.md).
This probe tries the stronger reader that fits the 2-core CPU machine: the first `--split-layer`
blocks stay frozen and their output states are computed once (and cached), and the blocks above
are tuned with LoRA adapters (`peft`, rank `--rank` on every attention and MLP projection), with
a classifier over the answer options initialised from the LM head's rows for the option tokens
(so epoch 0 is the zero-shot reader). Training uses the task's TRAIN split with its human
rationales, every record in its three conditions (Q+R, Q, R: rationale dropout), cross-entropy
over the options. After every epoch the reader is validated exactly as `bench/las_validation.py`
validates the heads (`validate`: human vs shuffled LAS, paired bootstrap; acc Q+R vs acc Q).

    nice -n 10 .venv/bin/python bench/las_lora_probe.py --task StrategyQA \\
        --states-cache runs/lora-states-StrategyQA-20.pt --out docs/quality/validation-lora.json

Needs `peft` (the `bench` extra). Writes a JSON file with every epoch's validation, the
settings, the timings and the commit.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from las_validation import DATA, TASKS, human_records, task_files, validate
from provenance import git_sha

from contrail.client.types import RationaleRecord
from contrail.distill.las import (
    CONDITIONS,
    Condition,
    SimulatorInfo,
    record_options,
    render_context,
    sim_inputs,
    token_batches,
)
from contrail.worker.models import resolve_model

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraReader:
    """SmolLM2 with frozen lower blocks (states cached by prompt) and LoRA-tuned upper blocks;
    a `RecordSimulator` for `las.evaluate_las`."""

    def __init__(self, args: argparse.Namespace, options: tuple[str, ...]) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        spec = resolve_model(args.model, None)
        self.model_name = spec.name
        self.args = args
        self.options = options
        self._tok: Any = AutoTokenizer.from_pretrained(str(spec.path))
        lm: Any = AutoModelForCausalLM.from_pretrained(str(spec.path), dtype=torch.float32)
        self._lower = lm.model.layers[: args.split_layer]
        self._embed = lm.model.embed_tokens
        self._rotary = lm.model.rotary_emb
        option_ids = [self._tok(" " + o, add_special_tokens=False)["input_ids"][0] for o in options]
        upper = _Upper(lm, args.split_layer, option_ids, self._rotary)
        for p in upper.parameters():
            p.requires_grad_(False)
        config = LoraConfig(
            r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05, target_modules=LORA_TARGETS
        )
        self.upper: Any = get_peft_model(upper, config)
        self.upper.base_model.model.head.requires_grad_(True)
        self.upper.base_model.model.bias.requires_grad_(True)
        self.states: dict[str, torch.Tensor] = {}
        self._ids: dict[str, list[int]] = {}
        self.epoch = 0
        self.feature_seconds = self.train_seconds = 0.0
        self.examples: list[tuple[str, int]] = []
        self.train_records = 0

    # ------------------------------------------------------------------ lower blocks, cached
    def ids(self, text: str) -> list[int]:
        if text not in self._ids:
            self._ids[text] = list(self._tok(text, add_special_tokens=False)["input_ids"])
        return self._ids[text]

    def read(self, texts: Sequence[str]) -> None:
        """Compute and keep the frozen blocks' output states of every text not yet read."""
        start = time.perf_counter()
        todo = sorted({t for t in texts if t not in self.states}, key=lambda t: len(self.ids(t)))
        with torch.inference_mode():
            for chunk in token_batches(todo, lambda t: len(self.ids(t)), 4096):
                width = max(len(self.ids(t)) for t in chunk)
                # Right padding: attention is causal, so pads never reach the real tokens.
                x = torch.tensor([self.ids(t) + [0] * (width - len(self.ids(t))) for t in chunk])
                h = run_blocks(self._lower, self._embed(x), self._rotary)
                for k, t in enumerate(chunk):
                    self.states[t] = h[k, : len(self.ids(t))].to(torch.float16).clone()
        self.feature_seconds += time.perf_counter() - start

    def _batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(self.ids(t)) for t in texts)
        h = torch.zeros(len(texts), width, self.states[texts[0]].shape[1])
        for k, t in enumerate(texts):
            h[k, : len(self.ids(t))] = self.states[t].float()
        return h, torch.tensor([len(self.ids(t)) - 1 for t in texts])

    # ------------------------------------------------------------------ training
    def start_training(self, examples: list[tuple[str, int]]) -> None:
        """Take the (prompt, option index) examples, read their frozen states and set up AdamW
        with 50 warm-up steps and a linear decay to 0 over `args.epochs` epochs."""
        self.examples = examples
        self.train_records = len(examples) // len(CONDITIONS)
        self.read([t for t, _ in examples])
        params = [p for p in self.upper.parameters() if p.requires_grad]
        self._opt = torch.optim.AdamW(params, lr=self.args.lr, weight_decay=0.0)
        steps = self.args.epochs * -(-len(examples) // self.args.batch)
        self._sched = torch.optim.lr_scheduler.LambdaLR(
            self._opt, lambda s: min(1.0, (s + 1) / 50) * max(0.0, 1 - s / steps)
        )

    def train_epoch(self, rng: random.Random) -> float:
        """One pass over the examples in a seeded order; returns the mean loss."""
        start = time.perf_counter()
        examples = self.examples
        self.upper.train()
        rng.shuffle(examples)
        # Length-bucketed batches (sorted within windows of 16 batches) waste little on padding.
        window = 16 * self.args.batch
        batches = []
        for i in range(0, len(examples), window):
            part = sorted(examples[i : i + window], key=lambda e: len(self.ids(e[0])))
            batches += [part[k : k + self.args.batch] for k in range(0, len(part), self.args.batch)]
        rng.shuffle(batches)
        total = 0.0
        for batch in batches:
            logits = self.upper(*self._batch([t for t, _ in batch]))
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor([y for _, y in batch]))
            self._opt.zero_grad()
            loss.backward()
            self._opt.step()
            self._sched.step()
            total += loss.item()
        self.epoch += 1
        self.train_seconds += time.perf_counter() - start
        return total / max(1, len(batches))

    # ------------------------------------------------------------------ RecordSimulator
    @property
    def name(self) -> str:
        return f"{self.model_name}@lora-r{self.args.rank}-above-{self.args.split_layer}"

    def predict(
        self, kept: Sequence[tuple[RationaleRecord, tuple[str, ...]]]
    ) -> dict[Condition, list[str | None]]:
        prompts = [{c: render_context(inp) for c, inp in sim_inputs(r, o).items()} for r, o in kept]
        texts = sorted({t for p in prompts for t in p.values()}, key=lambda t: len(self.ids(t)))
        self.read(texts)
        start = time.perf_counter()
        best: dict[str, int] = {}
        self.upper.eval()
        with torch.inference_mode():
            for i in range(0, len(texts), 32):
                chunk = texts[i : i + 32]
                for t, z in zip(chunk, self.upper(*self._batch(chunk)), strict=True):
                    best[t] = int(z.argmax())
        self.feature_seconds += time.perf_counter() - start
        return {
            c: [
                self.options[best[p[c]]] if o == self.options else None
                for p, (_, o) in zip(prompts, kept, strict=True)
            ]
            for c in CONDITIONS
        }

    def info(self) -> SimulatorInfo:
        a = self.args
        return SimulatorInfo(
            name=self.name,
            kind="trained",
            model=self.model_name,
            layer=a.split_layer,
            head=f"LoRA r={a.rank} on blocks {a.split_layer + 1}+ and an option head from the "
            f"LM head rows, AdamW lr {a.lr}, batch {a.batch}, epoch {self.epoch}",
            training=f"{a.task} train, human rationales, 3 conditions per record",
            train_records=self.train_records,
            train_items=self.train_records,
            seed=a.seed,
            feature_seconds=round(self.feature_seconds, 1),
            train_seconds=round(self.train_seconds, 1),
        )


class _Upper(torch.nn.Module):
    """The blocks above the split, the final norm, and one logit per answer option."""

    def __init__(self, lm: Any, split: int, option_ids: list[int], rotary: Any) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(lm.model.layers[split:])
        self.norm = lm.model.norm
        self.head = torch.nn.Parameter(lm.lm_head.weight[option_ids].detach().clone())
        self.bias = torch.nn.Parameter(torch.zeros(len(option_ids)))
        self._rotary = [rotary]  # in a list: not a submodule, so LoRA never targets it

    def forward(self, h: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        h = run_blocks(self.blocks, h, self._rotary[0])
        z = self.norm(h[torch.arange(h.shape[0]), last])
        return z @ self.head.T + self.bias


def run_blocks(blocks: Any, h: torch.Tensor, rotary: Any) -> torch.Tensor:
    """Decoder blocks over right-padded states, positions from 0 (no mask: causal attention)."""
    positions = torch.arange(h.shape[1]).unsqueeze(0)
    embeddings = rotary(h, positions)
    for block in blocks:
        out = block(h, position_ids=positions, position_embeddings=embeddings)
        h = out[0] if isinstance(out, tuple) else out
    return h


def examples_of(reader: LoraReader, train: list[RationaleRecord]) -> list[tuple[str, int]]:
    out = []
    for r in train:
        options = record_options(r)
        if options != reader.options:
            continue
        label = [o.casefold() for o in options].index(r.answer.casefold())
        out += [(render_context(inp), label) for inp in sim_inputs(r, options).values()]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="StrategyQA")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--split-layer", type=int, default=20, help="frozen blocks below")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--states-cache", type=Path, default=None, help="keep the frozen states here")
    p.add_argument("--out", type=Path, default=Path("runs/validation-lora.json"))
    p.add_argument("--data-dir", type=Path, default=DATA, help="research data (dev and train)")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tasks, train_files = task_files(args.data_dir)
    task, dev = tasks[args.task]
    train = human_records(task, train_files[args.task], args.train_limit, args.seed)[0]
    human, shuffled = human_records(task, dev, None, args.seed)
    options = record_options(train[0])
    assert options is not None
    reader = LoraReader(args, options)
    if args.states_cache and args.states_cache.exists():
        reader.states = torch.load(args.states_cache)
    reader.start_training(examples_of(reader, train))
    if args.states_cache:
        torch.save(reader.states, args.states_cache)
    rng = random.Random(args.seed)
    epochs: list[dict[str, Any]] = []
    for epoch in range(args.epochs + 1):
        loss = reader.train_epoch(rng) if epoch else None
        result = validate(reader.name, reader, human, shuffled, args.bootstrap, args.seed)
        result["epoch"], result["train_loss"] = epoch, loss
        epochs.append(result)
        print(
            f"epoch {epoch}: loss {loss}, LAS human-shuffled {result['las_human_minus_shuffled']},"
            f" acc Q+R - acc Q {result['acc_qr_minus_acc_q_human']}, passes {result['passes']}",
            file=sys.stderr,
            flush=True,
        )
    out = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "provenance": git_sha(),
        "total_seconds": round(time.perf_counter() - start, 1),
        "epochs": epochs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
