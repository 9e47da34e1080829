"""Student-training export in the paper's format (docs/METHOD.md section 3; docs/QUALITY.md shows
how to load it with Hugging Face `datasets`).

    input:  "[factual] <question> \\n (A) <c1> (B) <c2> ..."
    target: "[factual] <rationale> So the answer is <answer>"

Counterfactual records use "[counterfactual]"; the answer is the record's `answer` (the one its
rationale argues for). Options are the record's choices (StrategyQA and CREAK records carry
yes/no and true/false); a free-form record's input is the tagged question alone.

Each row keeps `item_id`, `tag`, `task`, `answer`, `gold_answer`, `rationale` and `source_index`
(the 0-based position of the source record among the dataset's records), so every exported row
maps back to the record it came from. Records with an `error` are not exported.

Train/dev split (`train.*`, `dev.*`; a split without rows gets no files): by item id (SHA-256
of seed and id, like every random choice in contrail), so the factual and counterfactual
rationales of one item always land in the same split.

Beside these files, the same rows in the formats training tools read (`adapters.py`: TRL,
axolotl, LLaMA-Factory, the reference release's own files), each in a folder of its own.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from contrail.client.types import RationaleRecord, RecordDecoding
from contrail.core.tasks.perturb import unit_hash

Split = Literal["train", "dev"]
EXPORT_FORMAT: Final = "scott-student-v1"  # manifest.json's "format"
_SPLIT_SALT: Final = "student-split"

STUDENT_SCHEMA = pa.schema(
    [
        ("input", pa.string()),
        ("target", pa.string()),
        ("tag", pa.string()),
        ("item_id", pa.string()),
        ("task", pa.string()),
        ("answer", pa.string()),
        ("gold_answer", pa.string()),
        ("rationale", pa.string()),
        ("source_index", pa.int64()),
        ("split", pa.string()),
    ]
)


class StudentRow(BaseModel):
    input: str
    target: str
    tag: str
    item_id: str
    task: str
    answer: str
    gold_answer: str
    rationale: str
    source_index: int
    split: Split


def option_label(index: int) -> str:
    return chr(ord("A") + index) if index < 26 else str(index + 1)


def student_input(record: RationaleRecord) -> str:
    text = f"[{record.tag.value}] {record.question.strip()}"
    if record.choices:
        options = " ".join(f"({option_label(i)}) {c}" for i, c in enumerate(record.choices))
        text += f" \\n {options}"
    return text


def student_target(record: RationaleRecord) -> str:
    rationale = " ".join(record.rationale.split())
    return f"[{record.tag.value}] {rationale} So the answer is {record.answer}"


def split_of(item_id: str, dev_fraction: float, seed: int) -> Split:
    return "dev" if unit_hash(_SPLIT_SALT, seed, item_id) < dev_fraction else "train"


def to_student_rows(
    records: Sequence[RationaleRecord], *, dev_fraction: float = 0.1, seed: int = 0
) -> list[StudentRow]:
    if not 0.0 <= dev_fraction <= 1.0:
        raise ValueError("dev_fraction must be in [0, 1]")
    return [
        StudentRow(
            input=student_input(rec),
            target=student_target(rec),
            tag=rec.tag.value,
            item_id=rec.item_id,
            task=rec.task.value,
            answer=rec.answer,
            gold_answer=rec.gold_answer,
            rationale=rec.rationale,
            source_index=i,
            split=split_of(rec.item_id, dev_fraction, seed),
        )
        for i, rec in enumerate(records)
        if rec.error is None
    ]


class DecodingUsed(BaseModel):
    """A teacher and decoding setting of a dataset, with the number of records it made: the
    provenance an export and a training report carry of the data they hold."""

    model: str
    decoding: RecordDecoding
    records: int


def decodings_used(records: Sequence[RationaleRecord]) -> list[DecodingUsed]:
    """Every (teacher, decoding) of `records` (those without an error), most records first.
    The contrast answer is left out: it is the item's, not a setting (`perturbation` says how it
    was chosen)."""
    counts = Counter(
        (r.model, r.decoding.model_copy(update={"contrast_answer": None}).model_dump_json())
        for r in records
        if r.error is None
    )
    return [
        DecodingUsed(model=m, decoding=RecordDecoding.model_validate_json(d), records=n)
        for (m, d), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


class ExportSummary(BaseModel):
    """What `export_student` wrote."""

    source_records: int
    exported: int
    skipped_errors: int
    counts: dict[str, dict[str, int]]  # split -> tag -> rows
    files: dict[str, str]  # "<split>.jsonl" / "<split>.parquet" -> path


def export_student(
    records: Sequence[RationaleRecord],
    out_dir: Path,
    *,
    dev_fraction: float = 0.1,
    seed: int = 0,
    parquet: bool = True,
    formats: Sequence[str] | None = None,
) -> ExportSummary:
    """Write `train.jsonl`/`dev.jsonl` (+ `.parquet`) under `out_dir`, the `formats` (default:
    all of `adapters.FORMATS`) in folders beside them, and a `manifest.json`.

    Old split files in `out_dir` are removed first, so the folder always holds one export."""
    from contrail.distill.adapters import FORMATS, export_adapters

    wanted = list(FORMATS if formats is None else formats)
    rows = to_student_rows(records, dev_fraction=dev_fraction, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in ("train.jsonl", "train.parquet", "dev.jsonl", "dev.parquet"):
        (out_dir / old).unlink(missing_ok=True)
    files: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "dev"):
        part = [r for r in rows if r.split == split]
        counts[split] = dict(sorted(Counter(r.tag for r in part).items()))
        if not part:
            # No file for an empty split: `datasets` cannot read a Parquet file without rows.
            continue
        path = out_dir / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for row in part:
                fh.write(row.model_dump_json() + "\n")
        files[f"{split}.jsonl"] = str(path)
        if parquet:
            ppath = out_dir / f"{split}.parquet"
            table = pa.Table.from_pylist([r.model_dump() for r in part], STUDENT_SCHEMA)
            pq.write_table(table, ppath, compression="zstd")
            files[f"{split}.parquet"] = str(ppath)
    kept = [r for r in records if r.error is None]
    by_split: dict[Split, list[RationaleRecord]] = {
        s: [r for r in kept if split_of(r.item_id, dev_fraction, seed) == s]
        for s in ("train", "dev")
    }
    files.update(export_adapters(by_split, out_dir, wanted))
    summary = ExportSummary(
        source_records=len(records),
        exported=len(rows),
        skipped_errors=len(records) - len(rows),
        counts=counts,
        files=files,
    )
    manifest = {
        "format": EXPORT_FORMAT,
        "formats": wanted,
        "dev_fraction": dev_fraction,
        "seed": seed,
        **summary.model_dump(),
        # what made the rows (contrail train reports it when it learns from this folder)
        "decodings": [d.model_dump(mode="json", by_alias=True) for d in decodings_used(records)],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return summary


def load_records(path: Path) -> list[RationaleRecord]:
    """Records of a contrail dataset file (`.jsonl` or `.parquet`)."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        return [RationaleRecord.model_validate(row) for row in table.to_pylist()]
    with path.open(encoding="utf-8") as fh:
        return [RationaleRecord.model_validate_json(line) for line in fh if line.strip()]


__all__ = [
    "EXPORT_FORMAT",
    "STUDENT_SCHEMA",
    "DecodingUsed",
    "ExportSummary",
    "StudentRow",
    "decodings_used",
    "export_student",
    "load_records",
    "split_of",
    "student_input",
    "student_target",
    "to_student_rows",
]
