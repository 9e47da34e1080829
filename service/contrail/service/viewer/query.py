"""Filtering and paging over a job's records held as Arrow fragments (no storage access here).

A job's records are a sequence of fragments in dataset order: the row groups of the merged
Parquet file of a finished job, or the shard files of a running one. A page is found by walking
the fragments: without filters only their row counts are needed (one fragment read per page);
with filters only the filtered columns are read from every fragment, and the page's rows are then
taken from the few fragments that hold them. Arrow compute does the matching in C++, so a filter
over 100,000 records costs milliseconds once the columns are in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc


class Fragment(Protocol):
    """A run of consecutive records: its row count and its columns on demand."""

    @property
    def rows(self) -> int: ...

    def read(self, columns: Sequence[str]) -> pa.Table: ...


@dataclass(frozen=True)
class Filters:
    """Record filters; all given ones must hold. Text matching ignores case."""

    tag: str | None = None
    finish_reason: str | None = None
    answer: str | None = None
    text: str | None = None  # substring of the item id, question or rationale
    item_ids: frozenset[str] | None = None  # exact item ids (one item's view, comparisons)

    @property
    def active(self) -> bool:
        return any(
            v is not None
            for v in (self.tag, self.finish_reason, self.answer, self.text, self.item_ids)
        )

    def columns(self) -> list[str]:
        cols: list[str] = []
        if self.tag is not None:
            cols.append("tag")
        if self.finish_reason is not None:
            cols.append("finish_reason")
        if self.answer is not None:
            cols.append("answer")
        if self.text is not None:
            cols += ["item_id", "question", "rationale"]
        if self.item_ids is not None and "item_id" not in cols:
            cols.append("item_id")
        return cols

    def mask(self, table: pa.Table) -> pa.ChunkedArray | pa.Array:
        conds: list[Any] = []
        if self.tag is not None:
            conds.append(pc.equal(table["tag"], self.tag))
        if self.finish_reason is not None:
            conds.append(pc.equal(table["finish_reason"], self.finish_reason))
        if self.answer is not None:
            conds.append(pc.equal(pc.utf8_lower(table["answer"]), self.answer.lower()))
        if self.text is not None:
            hits = [
                pc.match_substring(table[c], self.text, ignore_case=True)
                for c in ("item_id", "question", "rationale")
            ]
            conds.append(pc.or_kleene(pc.or_kleene(hits[0], hits[1]), hits[2]))
        if self.item_ids is not None:
            conds.append(pc.is_in(table["item_id"], pa.array(sorted(self.item_ids), pa.string())))
        result = conds[0]
        for cond in conds[1:]:
            result = pc.and_kleene(result, cond)
        # Nulls (a missing field) never match.
        return pc.fill_null(result, False)


@dataclass
class Page:
    """Rows `offset`..`offset+limit` of the records matching a filter."""

    total: int  # records matching the filter
    rows: list[int] = field(default_factory=list)  # each record's position in the whole job
    records: list[dict[str, Any]] = field(default_factory=list)


def select(
    fragments: Sequence[Fragment],
    filters: Filters,
    offset: int,
    limit: int | None,
    columns: Sequence[str],
) -> Page:
    """The page of matching records (as dicts of `columns`) and how many match in all."""
    page = Page(total=0)
    end = None if limit is None else offset + limit
    base = 0  # position of the fragment's first row in the whole job
    for frag in fragments:
        n = frag.rows
        if filters.active:
            hits = pc.indices_nonzero(filters.mask(frag.read(filters.columns())))
            k = len(hits)
        else:
            hits = None
            k = n
        lo = max(offset - page.total, 0)
        hi = k if end is None else min(end - page.total, k)
        if lo < hi:
            idx = pa.array(range(lo, hi), pa.int64()) if hits is None else hits.slice(lo, hi - lo)
            table = frag.read(columns).take(idx)
            page.rows += [base + int(i) for i in idx.to_pylist()]
            page.records += table.to_pylist()
        page.total += k
        base += n
    return page


def column_values(fragments: Sequence[Fragment], column: str) -> list[Any]:
    """One column of every record, in order (e.g. item ids for set arithmetic)."""
    out: list[Any] = []
    for frag in fragments:
        out += frag.read([column])[column].to_pylist()
    return out
