"""The student export in the formats that training tools read, beside the paper's format
(`export.py`), one folder each:

- `trl/`: TRL's prompt/completion rows (`SFTTrainer` computes the loss on the completion only);
- `axolotl/`: axolotl's `input_output` rows, segments labelled for training or not;
- `llamafactory/`: LLaMA-Factory's alpaca rows, with the `dataset_info.json` entries that name
  them;
- `native/`: the reference release's own files (wangpf3/consistent-CoT-distillation:
  `train.jsonl`, `train.counterfactual.jsonl`, `dev.jsonl`, read by its `data_helper.py`).

What is learned follows the method (docs/METHOD.md section 3): a factual row learns its whole
target, "[factual] <rationale> So the answer is <answer>"; a counterfactual row learns only its
answer, with the rationale given, so its rationale moves into the prompt ("teacher forcing
through the rationale") and its completion is the answer alone. The trainers add the end-of-text
token to what is learned (TRL, LLaMA-Factory; axolotl: write it into the last segment yourself
if the tokenizer needs one). The split by item is the paper format's (`export.split_of`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, cast

from contrail.client.types import RationaleRecord, Tag, TaskName
from contrail.core.tasks.perturb import BINARY_CHOICES
from contrail.distill.export import Split, option_label, student_input, student_target
from contrail.distill.options import FORMATS, Format

ANSWER_PREFIX: Final = "So the answer is"


def prompt_completion(record: RationaleRecord) -> tuple[str, str]:
    """The student's prompt, and the completion it learns (see the module docstring)."""
    prompt = f"{student_input(record)}\n"
    if record.tag is Tag.COUNTERFACTUAL:
        rationale = " ".join(record.rationale.split())
        return f"{prompt}[counterfactual] {rationale} {ANSWER_PREFIX}", f" {record.answer}"
    return prompt, student_target(record)


def trl_row(record: RationaleRecord) -> dict[str, Any]:
    prompt, completion = prompt_completion(record)
    return {"prompt": prompt, "completion": completion}


def axolotl_row(record: RationaleRecord) -> dict[str, Any]:
    prompt, completion = prompt_completion(record)
    return {"segments": [{"label": False, "text": prompt}, {"label": True, "text": completion}]}


def alpaca_row(record: RationaleRecord) -> dict[str, Any]:
    prompt, completion = prompt_completion(record)
    return {"instruction": prompt.rstrip("\n"), "input": "", "output": completion.strip()}


def native_row(record: RationaleRecord) -> dict[str, Any]:
    """A line of the release's files: `statement` for claims (CREAK), `question` otherwise;
    `choices` as "(A) x (B) y" for multiple-choice tasks only (binary tasks have none there)."""
    key = "statement" if record.task is TaskName.CREAK else "question"
    row: dict[str, Any] = {"id": record.item_id, key: record.question.strip()}
    if record.choices and record.task not in BINARY_CHOICES:
        row["choices"] = " ".join(f"({option_label(i)}) {c}" for i, c in enumerate(record.choices))
    row["explanation"] = " ".join(record.rationale.split())
    row["answer"] = record.answer
    return row


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def export_adapters(
    by_split: Mapping[Split, Sequence[RationaleRecord]],
    out_dir: Path,
    formats: Sequence[str] = FORMATS,
) -> dict[str, str]:
    """Write each format's folder under `out_dir` (replacing an older one); the files written,
    by their path relative to `out_dir`. A split without records gets no file."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export formats {unknown}; known: {', '.join(FORMATS)}")
    files: dict[str, str] = {}
    for fmt in FORMATS:
        shutil.rmtree(out_dir / fmt, ignore_errors=True)
    for fmt in (cast(Format, f) for f in formats):
        written = _native(by_split, out_dir) if fmt == "native" else _rows(fmt, by_split, out_dir)
        files.update({str(p.relative_to(out_dir)): str(p) for p in written})
    return files


_ROW = {"trl": trl_row, "axolotl": axolotl_row, "llamafactory": alpaca_row}


def _rows(
    fmt: Format, by_split: Mapping[Split, Sequence[RationaleRecord]], out_dir: Path
) -> list[Path]:
    written = []
    for split, records in by_split.items():
        if records:
            path = out_dir / fmt / f"{split}.jsonl"
            _write_jsonl(path, (_ROW[fmt](r) for r in records))
            written.append(path)
    if fmt == "llamafactory" and written:
        written.append(_dataset_info(out_dir / fmt, [p.stem for p in written]))
    return written


def _dataset_info(folder: Path, splits: Sequence[str]) -> Path:
    """LLaMA-Factory's dataset registry for the alpaca files (`dataset_dir` = this folder)."""
    info = {
        f"contrail_{split}": {
            "file_name": f"{split}.jsonl",
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
        for split in splits
    }
    path = folder / "dataset_info.json"
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return path


def _native(by_split: Mapping[Split, Sequence[RationaleRecord]], out_dir: Path) -> list[Path]:
    """train.jsonl (factual), train.counterfactual.jsonl (counterfactual: the wrong answer and
    the rationale for it) and dev.jsonl (factual: the gold answer)."""
    folder = out_dir / "native"
    parts = {
        "train.jsonl": [r for r in by_split.get("train", ()) if r.tag is Tag.FACTUAL],
        "train.counterfactual.jsonl": [
            r for r in by_split.get("train", ()) if r.tag is Tag.COUNTERFACTUAL
        ],
        "dev.jsonl": [r for r in by_split.get("dev", ()) if r.tag is Tag.FACTUAL],
    }
    written = []
    for name, records in parts.items():
        if records:
            _write_jsonl(folder / name, (native_row(r) for r in records))
            written.append(folder / name)
    return written


__all__ = [
    "FORMATS",
    "Format",
    "alpaca_row",
    "axolotl_row",
    "export_adapters",
    "native_row",
    "prompt_completion",
    "trl_row",
]
