"""What reading a Parquet upload will cost, decided from the file's metadata and page headers
before any of its data is decoded.

pyarrow decodes a batch of rows whole, and one cell of 200 MB is a 200 MB string (then a Python
copy of it). So before a row group is read:

- its footer must be at most `MAX_FOOTER_BYTES` (the metadata is read whole);
- the page headers of every column chunk are read (a few bytes each, the data skipped): their
  uncompressed sizes are what pyarrow allocates, whatever the footer claims;
- a data page holding one value over the line limit is a `line_too_long` error naming its record
  (it is never read), and a page or dictionary over `BATCH_BYTES` rejects the upload;
- each row group is read in batches (at most 256 rows) small enough that what a batch can hold
  adds up to at most `BATCH_BYTES`: for a flat column, the pages its rows overlap; for a nested
  one (its pages cannot be mapped to rows), its whole chunk or the widest page per row, whichever
  is less; and for a dictionary-encoded one, the longest dictionary entry once per row (read
  from the dictionary page, at most `BATCH_BYTES` decompressed).

Known limit: a nested column's pages cannot be mapped to rows from their headers (version-1 data
pages count leaf values, not rows), so one list cell spanning many pages is estimated at two
pages per row; reading its repetition levels would close that.

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
MAX_ROW_BYTES: Final = 32 << 20  # what reading a single record may hold, all columns together
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

    def skip(self, n: int) -> None:
        if n < 0:
            raise ParquetTooCostly("a page header is malformed (length)")
        if self.pos + n > len(self.data):
            raise _Short
        self.pos += n

    def count(self, size: int) -> int:
        """A container's element count: every element takes at least one byte, so a count past
        the bytes left cannot be real (and must not drive a loop)."""
        if size > len(self.data) - self.pos:
            raise _Short
        return size

    def value(self, kind: int, depth: int, element: bool = False) -> Any:
        if depth > 16:
            raise ParquetTooCostly("a page header is malformed (nesting)")
        if kind in (1, 2):
            # A struct field's boolean is in its type; a container's takes a byte of its own.
            return self.byte() == 1 if element else kind == 1
        if kind == 3:
            return self.byte()
        if kind in (4, 5, 6):
            return self.zigzag()
        if kind == 7:
            self.skip(8)
            return None
        if kind == 8:
            self.skip(self.varint())
            return None
        if kind in (9, 10):
            head = self.byte()
            size = self.count(head >> 4 if head >> 4 != 15 else self.varint())
            return [self.value(head & 0x0F, depth + 1, element=True) for _ in range(size)]
        if kind == 11:
            size = self.count(self.varint())
            if size:
                kinds = self.byte()
                for _ in range(size):
                    self.value(kinds >> 4, depth + 1, element=True)
                    self.value(kinds & 0x0F, depth + 1, element=True)
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
    offset: int  # of its data (after the header)
    compressed: int


def _pages(f: IO[bytes], start: int, length: int, budget: list[int]) -> Iterator[_Page]:
    """The page headers of the column chunk at [start, start + length)."""
    pos, end = start, start + length
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise ParquetTooCostly(f"the file has more than {MAX_PAGES} pages")
        reader, header = _header(f, pos, min(4096, end - pos))
        kind, nbytes, compressed = header.get(1), header.get(2), header.get(3)
        if not isinstance(nbytes, int) or not isinstance(compressed, int):
            raise ParquetTooCostly("a page header is malformed (sizes)")
        if not (0 <= nbytes < 1 << 31 and 0 <= compressed < 1 << 31):
            raise ParquetTooCostly("a page header is malformed (sizes)")
        sub = header.get(5) or header.get(7) or header.get(8) or {}
        values = sub.get(1, 0) if isinstance(sub, dict) else 0
        if not isinstance(values, int) or not 0 <= values < 1 << 31:
            raise ParquetTooCostly("a page header is malformed (value count)")
        data = pos + reader.pos
        yield _Page(kind == _DICTIONARY_PAGE, int(values or 0), nbytes, data, compressed)
        pos = data + compressed


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


@dataclass
class _Column:
    """What one column chunk of a row group can put in a batch."""

    name: str
    flat: bool  # one value per row: a page's values are its rows
    pages: list[tuple[int, int, int]] = field(default_factory=list)  # (first row, rows, bytes)
    total: int = 0  # bytes of all its pages
    widest_page: int = 0
    entry: int = 0  # the longest dictionary entry (a value read from the dictionary)
    dictionary: int = 0  # bytes of its dictionary page: held while the chunk is read

    def batch_bytes(self, batch: int) -> int:
        """The most bytes any batch of `batch` rows (aligned as pyarrow reads them) holds of
        this column: the pages it overlaps, its dictionary, and one dictionary entry per row."""
        held = self.dictionary + batch * self.entry
        if not self.flat:  # pages cannot be mapped to rows: the batch may span the chunk
            return held + min(self.total, (batch + 1) * self.widest_page)
        return held + self._widest_window(batch)

    def _widest_window(self, batch: int) -> int:
        """The most page bytes one aligned window of `batch` rows overlaps. A window inside one
        page holds that page; any other window holds a page's first row, so only those windows
        are looked at (as many as pages, whatever the row count the footer claims)."""
        worst = self.widest_page
        i = 0
        for window in sorted({first // batch for first, _, _ in self.pages}):
            lo, hi = window * batch, window * batch + batch
            while i < len(self.pages) and self.pages[i][0] + self.pages[i][1] <= lo:
                i += 1
            held, j = 0, i
            while j < len(self.pages) and self.pages[j][0] < hi:
                held += self.pages[j][2]
                j += 1
            worst = max(worst, held)
        return worst


def plan_row_group(
    f: IO[bytes], metadata: Any, index: int, first_record: int, max_line: int, budget: list[int]
) -> ReadPlan:
    """How row group `index` (its first record numbered `first_record`) may be read."""
    group = metadata.row_group(index)
    plan = ReadPlan(MAX_BATCH_ROWS)
    rows = group.num_rows
    columns = [
        _column(
            f,
            group.column(j),
            metadata.schema.column(j),
            (first_record, rows),
            max_line,
            plan,
            budget,
        )
        for j in range(group.num_columns)
    ]
    batch = MAX_BATCH_ROWS
    while batch > 1 and sum(c.batch_bytes(batch) for c in columns) > BATCH_BYTES:
        batch //= 2
    one_row = sum(c.batch_bytes(1) for c in columns)
    if one_row > MAX_ROW_BYTES:
        raise ParquetTooCostly(
            f"records {first_record}-{first_record + rows - 1}: reading one record means holding "
            f"{one_row} bytes of pages and dictionaries across its {len(columns)} columns, over "
            f"the {MAX_ROW_BYTES} a record may cost; write the file with smaller pages or fewer "
            "columns"
        )
    plan.batch_rows = batch
    return plan


def _column(
    f: IO[bytes],
    chunk: Any,
    schema: Any,
    records: tuple[int, int],
    max_line: int,
    plan: ReadPlan,
    budget: list[int],
) -> _Column:
    """The pages of one column chunk, recording single-value pages over the line limit as
    records too long and refusing pages over `BATCH_BYTES`."""
    start = chunk.data_page_offset
    if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
        start = chunk.dictionary_page_offset
    column = _Column(chunk.path_in_schema, schema.max_repetition_level == 0)
    first_record, rows = records
    seen = 0  # values before the page (rows, in a flat column)
    for page in _pages(f, start, chunk.total_compressed_size, budget):
        column.total += page.nbytes
        single = column.flat and not page.dictionary and page.values == 1  # one row's value
        if page.nbytes > max_line and (rows == 1 or single):
            # One record holds it all: that record is too long, and it is never read.
            record = first_record if rows == 1 else first_record + seen
            plan.too_long.append(RecordTooLong(record, column.name, page.nbytes))
        elif page.nbytes > BATCH_BYTES:
            where = f"records {first_record}-{first_record + rows - 1}"
            if column.flat and not page.dictionary:
                where = f"records {first_record + seen}-{first_record + seen + page.values - 1}"
            kind = "dictionary" if page.dictionary else "data"
            raise ParquetTooCostly(
                f"column {column.name!r}, {where}: a {kind} page of {page.nbytes} bytes, over "
                f"the {BATCH_BYTES} a page may hold; write the file with smaller pages and row "
                "groups (pyarrow: data_page_size, row_group_size)"
            )
        elif page.dictionary:
            column.dictionary = max(column.dictionary, page.nbytes)
            column.entry = max(column.entry, _longest_entry(f, chunk, schema, page))
        else:
            column.pages.append((seen, page.values, page.nbytes))
            column.widest_page = max(column.widest_page, page.nbytes)
        seen += 0 if page.dictionary else page.values
    return column


_FIXED_WIDTH: Final = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}


def _longest_entry(f: IO[bytes], chunk: Any, schema: Any, page: _Page) -> int:
    """The longest value of a dictionary page (at most `BATCH_BYTES` decompressed, checked
    before): fixed-width types from their width, byte arrays by walking their PLAIN lengths."""
    physical = schema.physical_type
    if physical in _FIXED_WIDTH:
        return _FIXED_WIDTH[physical]
    if physical == "FIXED_LEN_BYTE_ARRAY":
        return int(schema.length)
    import pyarrow as pa

    if page.compressed > BATCH_BYTES:
        raise ParquetTooCostly(
            f"column {chunk.path_in_schema!r}: a dictionary page of {page.compressed} bytes"
        )
    f.seek(page.offset)
    raw = f.read(page.compressed)
    codec = str(chunk.compression).lower()
    try:
        data = raw if codec == "uncompressed" else pa.Codec(codec).decompress(raw, page.nbytes)
    except (pa.ArrowException, ValueError) as exc:
        raise ParquetTooCostly(
            f"column {chunk.path_in_schema!r}: unreadable dictionary: {exc}"
        ) from None
    view, pos, longest = memoryview(bytes(data)), 0, 0
    for _ in range(min(page.values, len(view) // 4)):
        (n,) = struct.unpack_from("<i", view, pos)
        if n < 0 or pos + 4 + n > len(view):
            raise ParquetTooCostly(f"column {chunk.path_in_schema!r}: malformed dictionary page")
        pos += 4 + n
        longest = max(longest, n)
    return longest
