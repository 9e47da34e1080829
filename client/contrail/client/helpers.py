"""Turn result records into a pandas DataFrame, a Hugging Face dataset or files.

pandas, pyarrow and datasets are optional: they are imported only when these helpers run, and a
missing one raises an ``ImportError`` that says what to install.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from contrail.client.types import RationaleRecord

__all__ = [
    "record_rows",
    "to_hf_dataset",
    "to_pandas",
    "write_jsonl",
    "write_parquet",
]

RecordLike = RationaleRecord | Mapping[str, Any]
DatasetFormat = Literal["jsonl", "parquet"]

_SUFFIXES: dict[str, DatasetFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def _require(module: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"This needs the optional package {package!r}: pip install {package}"
        ) from exc


def record_rows(records: Iterable[RecordLike]) -> list[dict[str, Any]]:
    """Plain JSON-like dicts (wire names: ``decoding.lambda``), one per record."""
    rows: list[dict[str, Any]] = []
    for r in records:
        if isinstance(r, RationaleRecord):
            rows.append(r.model_dump(mode="json", by_alias=True))
        else:
            rows.append(dict(r))
    return rows


def to_pandas(records: Iterable[RecordLike], *, flatten: bool = True) -> Any:
    """A ``pandas.DataFrame`` with one row per record.

    ``flatten=True`` spreads the nested decoding settings into ``decoding.mode``,
    ``decoding.lambda``, ... columns; ``False`` keeps one ``decoding`` column of dicts."""
    pd = _require("pandas", "pandas")
    rows = record_rows(records)
    if flatten:
        return pd.json_normalize(rows, max_level=1) if rows else pd.DataFrame()
    return pd.DataFrame(rows)


def to_hf_dataset(records: Iterable[RecordLike]) -> Any:
    """A Hugging Face ``datasets.Dataset`` (``decoding`` becomes a struct column)."""
    datasets = _require("datasets", "datasets")
    return datasets.Dataset.from_list(record_rows(records))


def format_for_path(path: str | os.PathLike[str], fmt: str | None = None) -> DatasetFormat:
    """``fmt`` if given, else the format the file suffix names (.jsonl or .parquet)."""
    if fmt is not None:
        if fmt not in ("jsonl", "parquet"):
            raise ValueError(f"Unknown format {fmt!r}: use 'jsonl' or 'parquet'")
        return "jsonl" if fmt == "jsonl" else "parquet"
    suffix = Path(path).suffix.lower()
    try:
        return _SUFFIXES[suffix]
    except KeyError:
        raise ValueError(
            f"Cannot tell the format of {os.fspath(path)!r} from its suffix: "
            "use .jsonl or .parquet (or pass format=...)"
        ) from None


def write_jsonl(records: Iterable[RecordLike], path: str | os.PathLike[str]) -> int:
    """Write records as JSON Lines; returns how many."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in record_rows(records):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_parquet(records: Iterable[RecordLike], path: str | os.PathLike[str]) -> int:
    """Write records as one Parquet file (needs pyarrow); returns how many."""
    pa = _require("pyarrow", "pyarrow")
    pq = _require("pyarrow.parquet", "pyarrow")
    rows = record_rows(records)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, os.fspath(path))
    return len(rows)
