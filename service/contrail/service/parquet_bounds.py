"""What reading a Parquet upload will cost, decided from the file's metadata and page headers
before any of its data is decoded.

pyarrow decodes a batch of rows whole, and one cell of 200 MB is a 200 MB string (then a Python
copy of it). So before a row group is read:

- its footer must be at most `MAX_FOOTER_BYTES` (the metadata is read whole);
- the page headers of every column chunk are read (a few bytes each, the data skipped): their
  uncompressed sizes are what pyarrow allocates, whatever the footer claims;
- a data page holding one value over the line limit is a `line_too_long` error naming its record
  (it is never read), and a page or dictionary over `BATCH_BYTES` rejects the upload;
- a row group whose pages add up to at most `BATCH_BYTES` is read 256 rows a batch; a larger one
  in batches small enough that their cells, each at most the size of the page (or dictionary)
  it comes from, add up to at most `BATCH_BYTES`.

pyarrow exposes no page headers, so this module reads them itself: a Parquet page header is a
small Thrift struct in the compact protocol, and the few dozen lines below decode just that
(fastparquet could, but it is a second Parquet engine for one struct).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Final

MAX_FOOTER_BYTES: Final = 16 << 20
BATCH_BYTES: Final = 8 << 20
MAX_BATCH_ROWS: Final = 256
MAX_PAGES: Final = 200_000  # page headers read per upload
_HEADER_WINDOW: Final = 64 << 10  # a page header longer than this is refused

# PageHeader.type
_DICTIONARY_PAGE: Final = 2


class ParquetTooCostly(Exception):
    """The file cannot be read within the bounds; the message says what to change."""


@dataclass
class RecordTooLong:
    """A record (1-based, in file order) holding a cell over the line limit."""

    record: int
    column: str
    nbytes: int


@dataclass
class ReadPlan:
    """How to read one row group: rows per batch, and the records to report instead of read."""

    batch_rows: int
    too_long: list[RecordTooLong] = field(default_factory=list)


# ------------------------------------------------------------------- Thrift compact protocol


class _Short(Exception):
    """The header runs past the bytes read so far."""


class _Compact:
    """Just enough of Thrift's compact protocol to read a struct into {field id: value}."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Short
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise ParquetTooCostly("a page header is malformed (varint)")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int, depth: int) -> Any:
        if depth > 16:
            raise ParquetTooCostly("a page header is malformed (nesting)")
        if kind in (1, 2):  # booleans carry their value in the type
            return kind == 1
        if kind == 3:
            return self.byte()
        if kind in (4, 5, 6):
            return self.zigzag()
        if kind == 7:
            self.pos += 8
            return None
        if kind == 8:
            n = self.varint()
            self.pos += n
            return None
        if kind in (9, 10):
            head = self.byte()
            size = head >> 4 if head >> 4 != 15 else self.varint()
            elem = head & 0x0F
            return [self.value(elem, depth + 1) for _ in range(size)]
        if kind == 11:
            size = self.varint()
            if size:
                kinds = self.byte()
                for _ in range(size):
                    self.value(kinds >> 4, depth + 1)
                    self.value(kinds & 0x0F, depth + 1)
            return None
        if kind == 12:
            return self.struct(depth + 1)
        raise ParquetTooCostly(f"a page header is malformed (type {kind})")

    def struct(self, depth: int = 0) -> dict[int, Any]:
        out: dict[int, Any] = {}
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return out
            delta, kind = head >> 4, head & 0x0F
            fid = last + delta if delta else self.zigzag()
            out[fid] = self.value(kind, depth)
            last = fid


@dataclass(frozen=True)
class _Page:
    dictionary: bool
    values: int
    nbytes: int  # uncompressed


def _pages(f: IO[bytes], start: int, length: int, budget: list[int]) -> Iterator[_Page]:
    """The page headers of the column chunk at [start, start + length)."""
    pos, end = start, start + length
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise ParquetTooCostly(f"the file has more than {MAX_PAGES} pages in large row groups")
        reader, header = _header(f, pos, min(4096, end - pos))
        kind, nbytes, compressed = header.get(1), header.get(2), header.get(3)
        if not isinstance(nbytes, int) or not isinstance(compressed, int) or compressed < 0:
            raise ParquetTooCostly("a page header is malformed (sizes)")
        sub = header.get(5) or header.get(7) or header.get(8) or {}
        values = sub.get(1, 0) if isinstance(sub, dict) else 0
        yield _Page(kind == _DICTIONARY_PAGE, int(values or 0), nbytes)
        pos += reader.pos + compressed


def _header(f: IO[bytes], pos: int, window: int) -> tuple[_Compact, dict[int, Any]]:
    """The page header at `pos`: read 4 KiB first (a header is usually a few dozen bytes), then
    up to `_HEADER_WINDOW` (page statistics may hold a min and max value)."""
    for size in (window, _HEADER_WINDOW):
        f.seek(pos)
        reader = _Compact(f.read(max(size, 1)))
        try:
            return reader, reader.struct()
        except _Short:
            continue
    raise ParquetTooCostly(f"a page header is longer than {_HEADER_WINDOW} bytes")


# ------------------------------------------------------------------- plans


def check_footer(f: IO[bytes]) -> None:
    """The footer's declared length, read from the last 8 bytes, before pyarrow reads it."""
    f.seek(0, 2)
    size = f.tell()
    if size < 12:
        raise ParquetTooCostly("the file is too short to be Parquet")
    f.seek(size - 8)
    (length,) = struct.unpack("<i", f.read(4))
    if length < 0 or length > min(MAX_FOOTER_BYTES, size - 12):
        raise ParquetTooCostly(
            f"the Parquet footer declares {length} bytes (at most {MAX_FOOTER_BYTES} are read)"
        )


def plan_row_group(
    f: IO[bytes], metadata: Any, index: int, first_record: int, max_line: int, budget: list[int]
) -> ReadPlan:
    """How row group `index` (its first record numbered `first_record`) may be read."""
    group = metadata.row_group(index)
    plan = ReadPlan(MAX_BATCH_ROWS)
    schema = metadata.schema
    widest = total = 0  # bytes one row can hold at most; bytes of all pages
    for j in range(group.num_columns):
        flat = schema.column(j).max_repetition_level == 0
        cell, pages = _column_bound(
            f, group.column(j), flat, (first_record, group.num_rows), max_line, plan, budget
        )
        widest += cell
        total += pages
    if total > BATCH_BYTES:
        plan.batch_rows = max(1, min(MAX_BATCH_ROWS, BATCH_BYTES // max(widest, 1)))
    return plan


def _column_bound(
    f: IO[bytes],
    chunk: Any,
    flat: bool,
    records: tuple[int, int],
    max_line: int,
    plan: ReadPlan,
    budget: list[int],
) -> tuple[int, int]:
    """The most bytes one cell of this column chunk can hold (the page or dictionary it comes
    from) and the bytes of all its pages, recording single-value pages over the line limit as
    records too long."""
    start = chunk.data_page_offset
    if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
        start = chunk.dictionary_page_offset
    name = chunk.path_in_schema
    first_record, rows = records
    group_records = f"records {first_record}-{first_record + rows - 1}"
    seen = 0  # values before the page (rows, in a flat column)
    widest = total = 0
    for page in _pages(f, start, chunk.total_compressed_size, budget):
        total += page.nbytes
        single = flat and not page.dictionary and page.values == 1  # one row's value
        if page.nbytes > max_line and (rows == 1 or single):
            # One record holds it all: that record is too long, and it is never read.
            record = first_record if rows == 1 else first_record + seen
            plan.too_long.append(RecordTooLong(record, name, page.nbytes))
        elif page.nbytes > BATCH_BYTES:
            where = group_records
            if flat and not page.dictionary:
                where = f"records {first_record + seen}-{first_record + seen + page.values - 1}"
            kind = "dictionary" if page.dictionary else "data"
            raise ParquetTooCostly(
                f"column {name!r}, {where}: a {kind} page of {page.nbytes} bytes, over the "
                f"{BATCH_BYTES} a page may hold; write the file with smaller pages and row "
                "groups (pyarrow: data_page_size, row_group_size)"
            )
        else:
            widest = max(widest, page.nbytes)
        seen += 0 if page.dictionary else page.values
    return widest, total
