"""What `contrail train` learns from: a contrail dataset file (`.jsonl` or `.parquet`), or a
folder written by the student export (`contrail export`: `train.jsonl`, `dev.jsonl` and
`manifest.json`). A job id is downloaded into a dataset file first (the CLI does that).

Both give the same examples: `examples.texts` reads a record and an export row alike. The split
into training and dev-loss items is made again from the item ids with the run's `dev_fraction`
and `seed`, not taken from the export's own split, so that `contrail eval-student` with the same
settings finds exactly the items the student never saw, whichever source trained it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from contrail.distill.export import (
    EXPORT_FORMAT,
    DecodingUsed,
    StudentRow,
    decodings_used,
    load_records,
)
from contrail.distill.student.examples import Row

SourceKind = Literal["dataset", "export"]


@dataclass(frozen=True)
class TrainingData:
    rows: list[Row]
    kind: SourceKind
    sha256: str  # of the dataset file; of an export, of its train.jsonl then dev.jsonl
    decodings: list[DecodingUsed]  # the teachers and decoding settings that made the rows


def load_training_data(source: Path) -> TrainingData:
    """The rows of `source` (records with an error are left out), raising ValueError for a
    folder that is not a student export or a row that is not valid."""
    if source.is_dir():
        return _export(source)
    records = [r for r in load_records(source) if r.error is None]
    rows: list[Row] = list(records)
    return TrainingData(rows, "dataset", _sha256([source]), decodings_used(records))


def _export(folder: Path) -> TrainingData:
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError(f"{folder}: not a student export (no manifest.json)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{manifest_path}: not a {EXPORT_FORMAT} export manifest")
    listed = manifest.get("files", {})
    files = [folder / f"{split}.jsonl" for split in ("train", "dev")]
    for path in files:
        if path.name in listed and not path.is_file():
            raise ValueError(f"{folder}: the export's manifest lists {path.name}, which is missing")
    files = [f for f in files if f.is_file()]
    export_rows = [row for path in files for row in _rows(path)]
    # The dataset's order (each row's source_index), so that training on the export batches
    # exactly as training on the dataset does: same seed, same model.
    export_rows.sort(key=lambda r: r.source_index)
    rows: list[Row] = list(export_rows)
    # An export made before its manifest named the decodings reports none.
    decodings = [DecodingUsed.model_validate(d) for d in manifest.get("decodings", [])]
    return TrainingData(rows, "export", _sha256(files), decodings)


def _rows(path: Path) -> Iterable[StudentRow]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield StudentRow.model_validate_json(line)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(x) for x in first["loc"]) or "row"
                raise ValueError(f"{path}:{lineno}: {where}: {first['msg']}") from None


def _sha256(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


__all__ = ["SourceKind", "TrainingData", "load_training_data"]
