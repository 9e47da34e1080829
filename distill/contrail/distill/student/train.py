"""`contrail train`: fine-tune a student on a contrail dataset, with transformers' `Trainer`.

Built on `transformers.Trainer` (optimizer, warmup schedule, gradient clipping, checkpoints,
resume, early stopping, progress bar) and peft for LoRA. One deviation, and why:

- **The loss.** `scott` weighs the two kinds of rows, `(1 - a) * CE_factual + a *
  CE_counterfactual` (docs/METHOD.md section 3). `compute_loss` takes the token-mean
  cross-entropy of each kind within the batch and weighs them; rows of both kinds are shuffled
  into the same batches. The reference release instead draws one batch of each kind per step;
  in expectation the two are the same loss, and one loader keeps `Trainer`'s sampling, seeding
  and resume intact. TRL's `SFTTrainer` masks the prompt the same way (its prompt/completion
  rows are the export's `trl/` folder) but has no weight between kinds, hence `Trainer`.

The run folder: `model/` (the best checkpoint by dev loss, with its tokenizer; a LoRA run saves
the merged model), `checkpoints/`, `config.json` (the settings), `report.json` (provenance:
the data, the job it came from, every teacher and decoding setting that made it, seconds,
tokens/s, losses) and `loss.png`. What it learns from: a dataset file or a student export folder
(`sources.py`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from contrail.client.jobs import DEFAULT_MODEL
from contrail.client.types import Job
from contrail.distill.export import DecodingUsed
from contrail.distill.student.examples import (
    IGNORE,
    Example,
    Objective,
    build_examples,
    split_records,
)
from contrail.distill.student.loading import decoder_start, load_model
from contrail.distill.student.sources import SourceKind, load_training_data

Dtype = Literal["float32", "bfloat16", "float16"]


class TrainConfig(BaseModel):
    """The settings of a run; the defaults are the reference release's (lr 3e-5, batch 16,
    warmup 0.06, clipping 1.0, up to 10 epochs with early stopping on dev loss, a = 0.5)."""

    model: str = Field(default=DEFAULT_MODEL, description="student: name, folder or Hub id")
    objective: Objective = "scott"
    alpha: float = Field(default=0.5, ge=0.0, le=1.0, description="counterfactual weight a")
    learning_rate: float = Field(default=3e-5, gt=0)
    batch_size: int = Field(default=16, ge=1)
    epochs: float = Field(default=10, gt=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    patience: int = Field(default=2, ge=1, description="epochs without a better dev loss")
    dev_fraction: float = Field(default=0.1, gt=0, lt=1)
    max_tokens: int = Field(default=512, ge=16)
    seed: int = 0
    device: str = "cpu"
    dtype: Dtype = "float32"
    lora_r: int | None = Field(default=None, ge=1, description="LoRA rank; None = full tuning")
    lora_alpha: int = 16


class TrainReport(BaseModel):
    config: TrainConfig
    student: str
    source: SourceKind | Literal["job"] = "dataset"  # reports made before it: a dataset
    dataset: str = Field(description="the file or export folder (a job's: a temporary download)")
    dataset_sha256: str
    job: Job | None = Field(default=None, description="the job the data came from, as fetched")
    records: int = Field(description="rows read (records, or export rows), errors left out")
    items: dict[str, int]  # split -> items
    examples: dict[str, dict[str, int]]  # split -> kind -> rows
    left_out: dict[str, int]
    teachers: list[str]
    decodings: list[str]  # mode-perturbation, e.g. contrastive-wrong
    # each teacher and setting in full, with its rows (empty in reports made before it)
    decoding_settings: list[DecodingUsed] = Field(default_factory=list)
    train_seconds: float
    train_tokens: int
    tokens_per_second: float
    epochs_run: float
    best_dev_loss: float | None
    final_train_loss: float | None
    resumed_from: str | None


def _decodings(used: Sequence[DecodingUsed]) -> list[str]:
    return sorted(
        {
            u.decoding.mode.value
            + (f"-{u.decoding.perturbation.value}" if u.decoding.perturbation else "")
            for u in used
        }
    )


class _Rows:
    """A map-style dataset of examples as the collator reads them."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        row = {"input_ids": ex.input_ids, "labels": ex.labels, "kind": ex.kind}
        if ex.decoder_input_ids is not None:
            row["decoder_input_ids"] = ex.decoder_input_ids
        return row


def _padded(seqs: Sequence[Sequence[int]], fill: int) -> tuple[Any, Any]:
    """(ids, mask): right-padded to the longest."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), fill, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def collate(pad_id: int) -> Any:
    """Batches of rows. A seq2seq row's labels align with its decoder inputs, which are given
    explicitly: the model's own shift of the labels would put pad where a counterfactual row's
    masked rationale must be read."""
    import torch

    def fn(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        ids, mask = _padded([r["input_ids"] for r in rows], pad_id)
        labels, _ = _padded([r["labels"] for r in rows], IGNORE)
        kind = torch.tensor([r["kind"] == "counterfactual" for r in rows], dtype=torch.bool)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "kind": kind}
        if "decoder_input_ids" in rows[0]:
            dec, dec_mask = _padded([r["decoder_input_ids"] for r in rows], pad_id)
            batch |= {"decoder_input_ids": dec, "decoder_attention_mask": dec_mask}
        return batch

    return fn


def weighted_loss(logits: Any, labels: Any, kind: Any, alpha: float, *, shift: bool = True) -> Any:
    """(1 - a) * token-mean CE of factual rows + a * that of counterfactual rows; a kind absent
    from the batch leaves the other's mean alone (so `factual` and `answer` get plain CE).
    `shift`: a causal model's logits at t predict token t + 1; a seq2seq decoder's predict the
    label at t (its inputs are already shifted)."""
    import torch

    shift_logits = (logits[:, :-1, :] if shift else logits).float()
    shift_labels = labels[:, 1:] if shift else labels
    token_loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(shift_labels.shape)
    learned = (shift_labels != IGNORE).float()
    parts = []
    for rows, weight in ((~kind, 1.0 - alpha), (kind, alpha)):
        n = learned[rows].sum()
        if n > 0:
            parts.append((weight, (token_loss[rows] * learned[rows]).sum() / n))
    total = sum(w for w, _ in parts)
    return sum(w / total * loss for w, loss in parts)


def _trainer_class() -> Any:
    from transformers import Trainer

    class ScottTrainer(Trainer):  # type: ignore[misc]
        alpha: float = 0.5

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            kind = inputs.pop("kind")
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            shift = "decoder_input_ids" not in inputs
            loss = weighted_loss(outputs.logits, labels, kind, self.alpha, shift=shift)
            return (loss, outputs) if return_outputs else loss

    return ScottTrainer


def _load_student(config: TrainConfig) -> tuple[Any, Any, str, int | None]:
    """(model, tokenizer, name, its decoder's start token: None for a causal student)."""
    from transformers import AutoTokenizer

    from contrail.worker.models import resolve_model

    spec = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(spec.path)
    model: Any = load_model(spec.path, dtype=config.dtype)
    start = decoder_start(model)
    if config.lora_r is not None:
        from peft import LoraConfig, get_peft_model

        task = "CAUSAL_LM" if start is None else "SEQ_2_SEQ_LM"
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, task_type=task)
        model = get_peft_model(model, lora)
    return model, tokenizer, spec.name, start


def loss_chart(history: Sequence[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("loss", "train"), ("eval_loss", "dev")):
        points = [(h["epoch"], h[key]) for h in history if key in h and "epoch" in h]
        if points:
            marker = "o" if key == "eval_loss" else ""
            ax.plot(*zip(*points, strict=True), marker=marker, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def train(
    dataset: Path,
    out_dir: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    job: Job | None = None,
) -> TrainReport:
    """Train a student on `dataset` (a contrail dataset file or a student export folder) into
    the run folder `out_dir`. `job`: the job `dataset` was downloaded from, for the report."""
    from transformers import EarlyStoppingCallback, TrainingArguments, set_seed

    set_seed(config.seed)
    data = load_training_data(dataset)
    records = data.rows
    parts = split_records(records, dev_fraction=config.dev_fraction, seed=config.seed)
    model, tokenizer, student, start = _load_student(config)
    built = {
        s: build_examples(
            parts[s], tokenizer, config.objective, max_tokens=config.max_tokens, decoder_start=start
        )
        for s in ("train", "dev")
    }
    if not built["train"].examples or not built["dev"].examples:
        raise ValueError(
            f"too few records for objective {config.objective!r}: "
            f"{len(built['train'].examples)} train / {len(built['dev'].examples)} dev examples"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of all steps
        max_grad_norm=config.max_grad_norm,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_strategy="steps",
        logging_steps=1,
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        report_to=[],
        use_cpu=config.device == "cpu",
        bf16=config.dtype == "bfloat16" and config.device != "cpu",
        fp16=config.dtype == "float16",
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=_Rows(built["train"].examples),
        eval_dataset=_Rows(built["dev"].examples),
        data_collator=collate(pad),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=config.patience)],
    )
    trainer.alpha = config.alpha
    checkpoint = _last_checkpoint(out_dir / "checkpoints") if resume else None
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.monotonic() - started
    final = trainer.model.merge_and_unload() if config.lora_r is not None else trainer.model
    final.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")
    history = trainer.state.log_history
    loss_chart(history, out_dir / "loss.png")
    epochs_run = float(trainer.state.epoch or 0.0)
    per_epoch = sum(
        len(e.input_ids) + len(e.decoder_input_ids or ()) for e in built["train"].examples
    )
    tokens = int(per_epoch * epochs_run)
    losses = [h["loss"] for h in history if "loss" in h]
    report = TrainReport(
        config=config,
        student=student,
        source="job" if job is not None else data.kind,
        dataset=str(dataset),
        dataset_sha256=data.sha256,
        job=job,
        records=len(records),
        items={s: len({r.item_id for r in parts[s]}) for s in ("train", "dev")},
        examples={
            s: dict(sorted(Counter(e.kind for e in built[s].examples).items()))
            for s in ("train", "dev")
        },
        left_out={
            "too_long": sum(b.too_long for b in built.values()),
            "not_for_objective": sum(b.not_for_objective for b in built.values()),
        },
        teachers=sorted({u.model for u in data.decodings}),
        decodings=_decodings(data.decodings),
        decoding_settings=data.decodings,
        train_seconds=round(seconds, 2),
        train_tokens=tokens,
        tokens_per_second=round(tokens / seconds, 1) if seconds > 0 else math.nan,
        epochs_run=epochs_run,
        best_dev_loss=trainer.state.best_metric,
        final_train_loss=losses[-1] if losses else None,
        resumed_from=str(checkpoint) if checkpoint else None,
    )
    (out_dir / "report.json").write_text(report.model_dump_json(indent=2, by_alias=True) + "\n")
    return report


def _last_checkpoint(folder: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not folder.is_dir():
        return None
    last = get_last_checkpoint(str(folder))  # type: ignore[no-untyped-call]
    return Path(last) if last else None


def mean_loss(model: Any, examples: Sequence[Example], pad_id: int, alpha: float = 0.5) -> float:
    """The training loss of `model` over `examples` (one batch), without gradients."""
    import torch

    batch = collate(pad_id)([_Rows(examples)[i] for i in range(len(examples))])
    labels, kind = batch.pop("labels"), batch.pop("kind")
    with torch.no_grad():
        logits = model(**batch).logits
    shift = "decoder_input_ids" not in batch
    return float(weighted_loss(logits, labels, kind, alpha, shift=shift))


__all__ = [
    "TrainConfig",
    "TrainReport",
    "collate",
    "loss_chart",
    "mean_loss",
    "train",
    "weighted_loss",
]
