"""Writing rationale datasets: JSONL and Parquet side by side, streamed in batches.

The Arrow schema, one for every dataset contrail writes and reads, is in
`contrail.core.dataset_schema`.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from contrail.client.types import ItemError, RationaleRecord
from contrail.core.dataset_schema import RECORD_SCHEMA


def record_json(record: RationaleRecord) -> str:
    """The one JSON form of a record (field aliases, e.g. "lambda", as on the wire)."""
    return record.model_dump_json(by_alias=True)


_PARSE = pa_json.ParseOptions(explicit_schema=RECORD_SCHEMA, unexpected_field_behavior="ignore")


def batch_table(lines: list[str]) -> pa.Table:
    """Records' JSON lines as an Arrow table of RECORD_SCHEMA, parsed by Arrow's JSON reader
    (a finalizer's merge spent most of its time in json.loads and Table.from_pylist before)."""
    data = ("\n".join(lines) + "\n").encode()
    block = max(len(data) + 1, 1 << 20)  # one block: Arrow's default 1 MiB splits long batches
    table = pa_json.read_json(io.BytesIO(data), pa_json.ReadOptions(block_size=block), _PARSE)
    return table.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)


class DatasetWriter:
    """Streams records to `<base>.jsonl` + `<base>.parquet` and errors to `<base>.errors.jsonl`.

    `path` may name either data file (or neither suffix); the other files sit beside it.
    """

    def __init__(self, path: Path, *, parquet: bool = True, batch_size: int = 5_000) -> None:
        base = path.with_suffix("") if path.suffix in (".jsonl", ".parquet") else path
        jsonl_path = base.with_name(base.name + ".jsonl")
        self.jsonl_path = jsonl_path
        self.parquet_path = base.with_name(base.name + ".parquet") if parquet else None
        self.errors_path = base.with_name(base.name + ".errors.jsonl")
        self.records = 0
        self.errors = 0
        self._batch: list[str] = []  # JSON lines, parsed by Arrow a batch at a time
        self._batch_size = batch_size
        jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        self._jsonl = jsonl_path.open("w", encoding="utf-8")
        self._errors = self.errors_path.open("w", encoding="utf-8")
        self._parquet = (
            pq.ParquetWriter(self.parquet_path, RECORD_SCHEMA, compression="zstd")
            if self.parquet_path
            else None
        )

    def write(self, item: RationaleRecord | ItemError) -> None:
        if isinstance(item, ItemError):
            self._errors.write(item.model_dump_json() + "\n")
            self.errors += 1
            return
        line = record_json(item)
        self._jsonl.write(line + "\n")
        self.records += 1
        if self._parquet is not None:
            self._batch.append(line)
            if len(self._batch) >= self._batch_size:
                self._flush()

    def _flush(self) -> None:
        if self._parquet is not None and self._batch:
            self._parquet.write_table(batch_table(self._batch))
            self._batch.clear()

    def close(self) -> None:
        self._flush()
        if self._parquet is not None:
            self._parquet.close()
        self._jsonl.close()
        self._errors.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
