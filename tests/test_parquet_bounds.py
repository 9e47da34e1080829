"""The Parquet page-header reader (contrail.service.parquet_bounds) on hostile bytes: a header
that lies about its sizes or counts is refused at once, never looped over or read on."""

from __future__ import annotations

import io

import pytest

from contrail.service.parquet_bounds import ParquetTooCostly, _Column, _Compact, _header


def test_a_header_with_bool_lists_and_a_map_parses_in_step() -> None:
    # field 1: list of 3 bools (one byte each inside a container), field 2: i32 7 (zigzag 14),
    # field 3: map of 1 bool -> bool, field 4: i32 -1, stop.
    data = bytes([0x19, 0x31, 1, 2, 1, 0x15, 14, 0x1B, 0x01, 0x11, 1, 2, 0x15, 1, 0x00])
    assert _Compact(data).struct() == {1: [True, False, True], 2: 7, 3: None, 4: -1}


@pytest.mark.parametrize(
    "data",
    [
        bytes([0x19, 0xF1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),  # 2^63 bools
        bytes([0x1B, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x11]),  # a map of 2^32 bool pairs
        bytes([0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]),  # a binary of 4 GB
        bytes([0x17, 1, 2, 3]),  # a double cut short
        bytes([0x1C] * 40),  # structs nested past any real header
    ],
    ids=["list-count", "map-count", "binary-length", "short-double", "nesting"],
)
def test_counts_and_lengths_past_the_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ParquetTooCostly):
        _header(io.BytesIO(data), 0, len(data))


def test_negative_and_huge_page_sizes_are_refused() -> None:
    from contrail.service.parquet_bounds import _pages

    # type 0 (data page), uncompressed size -5 (zigzag 9), compressed 10 (zigzag 20), stop
    data = bytes([0x15, 0, 0x15, 9, 0x15, 20, 0x00])
    with pytest.raises(ParquetTooCostly, match="sizes"):
        list(_pages(io.BytesIO(data), 0, len(data), [10]))


def test_the_batch_bound_looks_at_pages_not_at_the_rows_a_footer_claims() -> None:
    """Two pages 10^15 rows apart: the bound is found from the pages, at once."""
    column = _Column("q", flat=True, pages=[(0, 10, 100), (10**15, 10, 200)], widest_page=200)
    assert column.batch_bytes(256) == 200
    column = _Column("q", flat=True, pages=[(0, 10, 100), (10, 10, 200)], widest_page=200)
    assert column.batch_bytes(256) == 300  # one batch overlaps both
    column.entry, column.dictionary = 1000, 5000
    assert column.batch_bytes(2) == 5000 + 2 * 1000 + 200
