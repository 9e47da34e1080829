"""Upload decoding: the bytes of an upload, in any accepted container, to validated items, in
memory that does not grow with the file.

Containers, detected from the content and checked against the filename:
- JSON lines (the default), split line by line; a line over the line limit is one error and is
  skipped without being buffered;
- one JSON array (what StrategyQA ships: the first non-blank character is "["), streamed element
  by element with ijson's C parser, so the array is never held whole;
- Parquet (magic bytes "PAR1"), spooled to a temporary file (its index is at the end) and read
  one row batch at a time;
- any of these gzip-compressed (magic bytes 1f 8b, several members allowed), decompressed a
  bounded piece at a time.
'.parquet' and '.gz' file names must hold what they say; content decides everything else.

Duplicate ids are found with `IdRegistry`, a temporary SQLite table on disk rather than a Python
set: an upload of 1M ids would otherwise keep ~80 MB of strings in the API process. SQLite (in
the standard library) gives exact answers and a bounded page cache; a Bloom filter would still
need an exact store behind it to name the first occurrence of a duplicate.

Everything here is synchronous and CPU-bound: the upload route runs it in a worker thread, so
validation never stalls the event loop that serves other requests.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from contrail.client.types import Compression, Container, ErrorDetail, Item, ItemError, TaskName
from contrail.core.tasks.formats import LineParser
from contrail.service import parquet_bounds

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
UTF8_BOM = b"\xef\xbb\xbf"
# Bytes (of decompressed content) validated per step, and Parquet rows per step: one step is a few
# milliseconds of work, after which the route's event loop gets its turn (see routers/files.py).
PIECE_BYTES = 64 << 10
PARQUET_BATCH_ROWS = 256
_BLANK = b" \t\r\n"


class UploadRejected(Exception):
    """The upload as a whole cannot be read (not per record): answered 422, or 413 for size."""

    def __init__(self, message: str, code: str, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


@dataclass
class Accepted:
    """One valid item: its id, its Item JSON (one line of a stored part) and where it was."""

    id: str
    line: bytes
    index: int


@dataclass
class Batch:
    items: list[Accepted] = field(default_factory=list)
    errors: list[ErrorDetail] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.items or self.errors)


# ---------------------------------------------------------------------------------- ids


class IdRegistry:
    """The ids of one upload in a temporary SQLite database (deleted on close)."""

    def __init__(self, scratch_dir: Path | None = None) -> None:
        fd, name = tempfile.mkstemp(prefix="contrail-ids-", suffix=".sqlite", dir=scratch_dir)
        os.close(fd)
        self.path = Path(name)
        # check_same_thread: the upload route calls from one worker thread at a time, not
        # always the same one.
        self.db = sqlite3.connect(name, isolation_level=None, check_same_thread=False)
        for pragma in (
            "journal_mode=OFF",
            "synchronous=OFF",
            "cache_size=-4096",  # KiB: the page cache is the memory this costs
            "temp_store=FILE",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID")

    def add(self, entries: Sequence[tuple[str, int]]) -> list[tuple[str, int, int]]:
        """Record (id, index) pairs; the (id, index, first index) of each repeated id."""
        if not entries:
            return []
        before = self.db.total_changes
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR IGNORE INTO ids VALUES (?, ?)", entries)
        self.db.execute("COMMIT")
        if self.db.total_changes - before == len(entries):
            return []
        repeats = []
        for item_id, index in entries:  # rare: only a batch holding a repeat is looked at
            (first,) = self.db.execute("SELECT at FROM ids WHERE id = ?", (item_id,)).fetchone()
            if first != index:
                repeats.append((item_id, index, int(first)))
        return repeats

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- sinks


class ErrorBudget:
    """Invalid records an upload may still cost before its validation stops: past it, the
    sinks stop parsing in the middle of a piece, and the route answers 422 at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0
        self.stopped_at: int | None = None  # the line or record at which validation stopped

    @property
    def exhausted(self) -> bool:
        return self.stopped_at is not None

    def spend(self, index: int, n: int = 1) -> None:
        self.spent += n
        if self.spent >= self.limit and self.stopped_at is None:
            self.stopped_at = index


class _Records:
    """Turns decoded records into a Batch: items or errors, numbered by line or record."""

    def __init__(self, parser: LineParser, unit: str, budget: ErrorBudget) -> None:
        self.parser = parser
        self.unit = unit
        self.budget = budget

    def take(self, batch: Batch, result: Item | ItemError | None, index: int) -> None:
        if result is None:
            return
        if isinstance(result, Item):
            line = result.model_dump_json(exclude_none=True).encode()
            batch.items.append(Accepted(result.id, line, index))
        else:
            batch.errors.append(self.detail(index, result.code, result.message, result.field))
            self.budget.spend(index)

    def detail(
        self, index: int, code: str, message: str, field_name: str | None = None
    ) -> ErrorDetail:
        where = {"line": index} if self.unit == "line" else {"record": index}
        return ErrorDetail(**where, field=field_name, code=code, message=message)


class _Lines(_Records):
    """JSON lines. A line longer than the limit is reported and skipped, never buffered."""

    def __init__(
        self, parser: LineParser, budget: ErrorBudget, max_line_bytes: int, first_line: int
    ) -> None:
        super().__init__(parser, "line", budget)
        self.max_line = max_line_bytes
        self.line_no = first_line - 1
        self.rest = b""
        self.skipping = False  # inside a line already reported as too long

    def feed(self, data: bytes) -> Batch:
        batch = Batch()
        if self.budget.exhausted:
            return batch
        if self.skipping:
            end = data.find(b"\n")
            if end < 0:
                return batch
            data = data[end + 1 :]
            self.skipping = False
        lines = (self.rest + data).split(b"\n") if self.rest else data.split(b"\n")
        self.rest = lines.pop()
        for raw in lines:
            if self.budget.exhausted:
                return batch
            self._line(batch, raw)
        if len(self.rest) > self.max_line:
            self.line_no += 1
            batch.errors.append(self._too_long())
            self.budget.spend(self.line_no)
            self.rest = b""
            self.skipping = True
        return batch

    def finish(self) -> Batch:
        batch = Batch()
        if self.rest and not self.skipping and not self.budget.exhausted:
            self._line(batch, self.rest)
        self.rest = b""
        return batch

    def _line(self, batch: Batch, raw: bytes) -> None:
        self.line_no += 1
        if len(raw) > self.max_line:
            batch.errors.append(self._too_long())
            self.budget.spend(self.line_no)
            return
        self.take(batch, self.parser.parse(raw, self.line_no), self.line_no)

    def _too_long(self) -> ErrorDetail:
        return self.detail(
            self.line_no,
            "line_too_long",
            f"line {self.line_no}: longer than {self.max_line} bytes",
        )


class _Array(_Records):
    """One JSON array, element by element (ijson's C backend). A syntax error ends the parse:
    nothing after it can be located reliably."""

    def __init__(self, parser: LineParser, budget: ErrorBudget, max_record_bytes: int) -> None:
        import ijson

        super().__init__(parser, "record", budget)
        self.ijson = ijson
        self.max_record = max_record_bytes
        self.out: list[Any] = ijson.sendable_list()
        self.coro = ijson.items_coro(self.out, "item", use_float=True)
        self.index = 0
        self.since_record = 0  # bytes fed without completing an element
        self.failed = False

    def feed(self, data: bytes) -> Batch:
        batch = Batch()
        # ijson reads an empty send as the end of the input.
        if self.failed or not data or self.budget.exhausted:
            return batch
        try:
            self.coro.send(data)
        except self.ijson.JSONError as exc:
            self._take_out(batch)
            self._syntax_error(batch, exc)
            return batch
        before = self.index
        self._take_out(batch)
        # Bytes of the element still open: all of this feed when it completed none (a lower
        # bound otherwise, so a record over the limit is caught one feed late at most).
        self.since_record = 0 if self.index > before else self.since_record + len(data)
        if self.since_record > self.max_record:
            self.failed = True
            n = self.index + 1
            batch.errors.append(
                self.detail(n, "line_too_long", f"record {n}: longer than {self.max_record} bytes")
            )
        return batch

    def finish(self) -> Batch:
        batch = Batch()
        if self.failed or self.budget.exhausted:
            return batch
        try:
            self.coro.close()
        except self.ijson.JSONError as exc:
            self._syntax_error(batch, exc)
        self._take_out(batch)
        return batch

    def _take_out(self, batch: Batch) -> None:
        for record in self.out:
            if self.budget.exhausted:
                break
            self.index += 1
            self.take(batch, self.parser.parse_value(record, self.index), self.index)
        del self.out[:]

    def _syntax_error(self, batch: Batch, exc: Exception) -> None:
        self.failed = True
        n = self.index + 1
        text = str(exc).split("\n", 1)[0].strip() or type(exc).__name__
        code = "number_too_large" if "overflow" in text else "invalid_json"
        batch.errors.append(self.detail(n, code, f"record {n}: malformed JSON array: {text}"))


class _Parquet(_Records):
    """Parquet: spooled to a temporary file, then read a row batch at a time (pyarrow), in
    batches whose size the file's page headers bound (`parquet_bounds`)."""

    def __init__(
        self, parser: LineParser, budget: ErrorBudget, max_line: int, scratch_dir: Path | None
    ) -> None:
        super().__init__(parser, "record", budget)
        self.max_line = max_line
        self.spool: IO[bytes] = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in close()
            prefix="contrail-upload-", suffix=".parquet", dir=scratch_dir
        )

    def feed(self, data: bytes) -> Batch:
        self.spool.write(data)
        return Batch()

    def batches(self) -> Iterator[Batch]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.spool.flush()
        index = 0
        try:
            with open(self.spool.name, "rb") as raw:
                parquet_bounds.check_footer(raw)
                # buffer_size: column chunks are streamed a page at a time, never read whole.
                reader = pq.ParquetFile(self.spool.name, pre_buffer=False, buffer_size=1 << 20)
                pages = [parquet_bounds.MAX_PAGES]
                for group in range(reader.num_row_groups):
                    plan = parquet_bounds.plan_row_group(
                        raw, reader.metadata, group, index + 1, self.max_line, pages
                    )
                    if plan.too_long:
                        yield self._too_long(plan.too_long)
                        return
                    for rows in reader.iter_batches(batch_size=plan.batch_rows, row_groups=[group]):
                        batch = Batch()
                        for record in rows.to_pylist():
                            if self.budget.exhausted:
                                yield batch
                                return
                            index += 1
                            self.take(batch, self.parser.parse_value(record, index), index)
                        del rows
                        yield batch
        except parquet_bounds.ParquetTooCostly as exc:
            raise UploadRejected(
                f"the Parquet file cannot be read within the upload's bounds: {exc}", "too_large"
            ) from None
        except (pa.ArrowException, OSError, ValueError, TypeError, OverflowError) as exc:
            # Whatever a malformed file makes pyarrow or the page-header reader raise is the
            # file's fault: a 422, never a 500.
            raise UploadRejected(
                f"not a readable Parquet file (after {index} records): {exc}", "invalid_parquet"
            ) from None
        except struct.error as exc:
            raise UploadRejected(f"not a readable Parquet file: {exc}", "invalid_parquet") from None

    def _too_long(self, records: list[parquet_bounds.RecordTooLong]) -> Batch:
        """Records holding a cell over the line limit, reported without being read."""
        batch = Batch()
        first: dict[int, parquet_bounds.RecordTooLong] = {}
        for r in records:  # a record's first cell over the limit names it, once
            first.setdefault(r.record, r)
        for r in sorted(first.values(), key=lambda r: r.record)[: self.budget.limit]:
            message = (
                f"record {r.record}: its {r.column!r} cell is {r.nbytes} bytes, longer than "
                f"{self.max_line} bytes"
            )
            batch.errors.append(self.detail(r.record, "line_too_long", message, r.column))
            self.budget.spend(r.record)
        return batch

    def close(self) -> None:
        self.spool.close()


class _Gunzip:
    """Streamed gzip (several members allowed), at most PIECE_BYTES out per step."""

    def __init__(self, max_bytes: int) -> None:
        self.d = zlib.decompressobj(wbits=31)
        self.max_bytes = max_bytes
        self.total = 0
        self.started = False

    def pieces(self, data: bytes) -> Iterator[bytes]:
        try:
            while data:
                self.started = True
                out = self.d.decompress(data, PIECE_BYTES)
                if out:
                    self.total += len(out)
                    if self.total > self.max_bytes:
                        raise UploadRejected(
                            f"the decompressed upload exceeds {self.max_bytes} bytes",
                            "too_large",
                            413,
                        )
                    yield out
                if self.d.eof:  # next member, if any
                    data = self.d.unused_data
                    self.d = zlib.decompressobj(wbits=31)
                    self.started = False
                else:
                    data = self.d.unconsumed_tail
        except zlib.error as exc:
            raise UploadRejected(f"not valid gzip data: {exc}", "invalid_gzip") from None

    def finish(self) -> None:
        if self.started and not self.d.eof:
            raise UploadRejected("the gzip data is truncated", "invalid_gzip")


# ---------------------------------------------------------------------------------- parser


class IngestParser:
    """Feed an upload's bytes (`feed`), then `finish`; each yields Batches of items and record
    errors. Whole-upload problems raise UploadRejected. Duplicate ids become errors here."""

    def __init__(
        self,
        task: TaskName,
        *,
        filename: str | None = None,
        max_line_bytes: int = 1 << 20,
        max_decompressed_bytes: int = 4 << 30,
        max_errors: int = 1000,
        scratch_dir: Path | None = None,
    ) -> None:
        self.parser = LineParser(task, track_duplicates=False)
        self.budget = ErrorBudget(max_errors)
        self.filename = (filename or "").lower()
        self.max_line = max_line_bytes
        self.max_decompressed = max_decompressed_bytes
        self.scratch_dir = scratch_dir
        self.ids = IdRegistry(scratch_dir)
        self.container: Container | None = None
        self.compression: Compression | None = None
        self._outer = b""  # the first bytes, until gzip can be told apart
        self._outer_known = False
        self._gunzip: _Gunzip | None = None
        self._inner = b""  # the first (decompressed) bytes, until the container is known
        self._started = False
        self._leading_lines = 0  # blank lines before the first record
        self._sink: _Lines | _Array | _Parquet | None = None

    @property
    def format(self) -> str:
        return self.parser.format or "generic"

    # -------------------------------------------------------------- driving
    def feed(self, data: bytes) -> Iterator[Batch]:
        if not data or self.budget.exhausted:
            return
        if not self._outer_known:
            self._outer += data
            if len(self._outer) < len(GZIP_MAGIC):
                return
            data = self._outer
            self._outer = b""
            self._know_outer(data)
        if self._gunzip is not None:
            for piece in self._gunzip.pieces(data):
                yield from self._deliver(piece)
                if self.budget.exhausted:
                    return
        else:
            for start in range(0, len(data), PIECE_BYTES):
                yield from self._deliver(data[start : start + PIECE_BYTES])
                if self.budget.exhausted:
                    return

    def finish(self) -> Iterator[Batch]:
        if self.budget.exhausted:
            return
        if not self._outer_known:  # fewer bytes than a gzip header
            data = self._outer
            self._outer = b""
            self._know_outer(data)
            yield from self._deliver(data)
        if self._gunzip is not None:
            self._gunzip.finish()
        if self._sink is None:
            rest = self._choose(self._inner, final=True)
            assert self._sink is not None and rest is not None
            if rest:
                yield self._dedupe(self._sink.feed(rest))
        if isinstance(self._sink, _Parquet):
            for batch in self._sink.batches():
                yield self._dedupe(batch)
        else:
            yield self._dedupe(self._sink.finish())

    def close(self) -> None:
        if isinstance(self._sink, _Parquet):
            self._sink.close()
        with contextlib.suppress(sqlite3.Error, OSError):
            self.ids.close()

    # -------------------------------------------------------------- container
    def _know_outer(self, head: bytes) -> None:
        self._outer_known = True
        if head.startswith(GZIP_MAGIC):
            self.compression = "gzip"
            self._gunzip = _Gunzip(self.max_decompressed)
        else:
            self._check_name(".gz", "gzip")

    def _deliver(self, data: bytes) -> Iterator[Batch]:
        if self._sink is None:
            chosen = self._choose(self._inner + data, final=False)
            if chosen is None:
                return
            data = chosen
        assert self._sink is not None
        batch = self._sink.feed(data)
        if batch:
            yield self._dedupe(batch)

    def _choose(self, data: bytes, *, final: bool) -> bytes | None:
        """Pick the container from the first bytes and return what the sink should read; None
        (keeping the bytes) while undecided."""
        self._inner = b""
        if len(data) < len(PARQUET_MAGIC) and not final:
            self._inner = data
            return None
        if data.startswith(PARQUET_MAGIC):
            self.container = "parquet"
            self._sink = _Parquet(self.parser, self.budget, self.max_line, self.scratch_dir)
            return data
        self._check_name((".parquet", ".pq"), "Parquet")
        if not self._started and data.startswith(UTF8_BOM):
            data = data[len(UTF8_BOM) :]
        self._started = True
        stripped = data.lstrip(_BLANK)
        if not stripped:  # only blank so far: drop it, counting its lines
            self._leading_lines += data.count(b"\n")
            if not final:
                return None
            self.container = "jsonl"
            self._sink = _Lines(self.parser, self.budget, self.max_line, self._leading_lines + 1)
            return b""
        if stripped.startswith(b"["):
            self.container = "json"
            self._sink = _Array(self.parser, self.budget, self.max_line)
            return stripped
        self.container = "jsonl"
        cut = data.rfind(b"\n", 0, len(data) - len(stripped)) + 1  # whole blank lines only
        self._leading_lines += data[:cut].count(b"\n")
        self._sink = _Lines(self.parser, self.budget, self.max_line, self._leading_lines + 1)
        return data[cut:]

    def _check_name(self, suffixes: str | tuple[str, ...], what: str) -> None:
        if self.filename.endswith(suffixes):
            raise UploadRejected(
                f"the file is named {self.filename!r} but its content is not {what}",
                "unsupported_format",
            )

    # -------------------------------------------------------------- duplicates
    def _dedupe(self, batch: Batch) -> Batch:
        repeats = self.ids.add([(a.id, a.index) for a in batch.items])
        if not repeats:
            return batch
        unit = "line" if self.container == "jsonl" else "record"
        repeated = {(item_id, index) for item_id, index, _ in repeats}
        batch.items = [a for a in batch.items if (a.id, a.index) not in repeated]
        for item_id, index, first in repeats:
            where = {"line": index} if unit == "line" else {"record": index}
            batch.errors.append(
                ErrorDetail(
                    **where,
                    field="id",
                    code="duplicate_id",
                    message=f"{unit} {index}: id {item_id!r} already appeared at {unit} {first}",
                )
            )
        batch.errors.sort(key=lambda e: e.line or e.record or 0)
        return batch
