"""Wire formats of the viewer's JSON endpoints (`/v1/viewer/...`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from contrail.client.types import ItemError, Manifest, RationaleRecord
from contrail.core.quality_signals import RecordSignals

Source = Literal["dataset", "shards"]


class RecordRow(BaseModel):
    """One rationale with its cheap quality signals (docs/QUALITY.md)."""

    row: int = Field(description="0-based position of the record in the job's dataset order.")
    record: RationaleRecord
    signals: RecordSignals


class RecordPage(BaseModel):
    object: Literal["record_page"] = "record_page"
    job_id: str
    source: Source = Field(
        description="'dataset': the merged Parquet of a finished job; 'shards': the shard "
        "files written so far (the job is still running)."
    )
    total: int = Field(description="Records matching the filters.")
    offset: int
    limit: int
    data: list[RecordRow]


class ItemView(BaseModel):
    """Every rationale of one item (factual and counterfactual) and its per-line errors."""

    object: Literal["item"] = "item"
    job_id: str
    item_id: str
    records: list[RecordRow]
    errors: list[ItemError]


class ErrorPage(BaseModel):
    object: Literal["error_page"] = "error_page"
    job_id: str
    source: Source
    total: int
    offset: int
    limit: int
    data: list[ItemError]


class ManifestView(BaseModel):
    """The manifest of a finished job (quality signals, timings), null while it runs."""

    object: Literal["manifest"] = "manifest"
    job_id: str
    manifest: Manifest | None


class ComparePair(BaseModel):
    """The records of one (item, tag) in two jobs; a side is null where that job has none."""

    item_id: str
    tag: str
    a: RecordRow | None
    b: RecordRow | None


class ComparePage(BaseModel):
    object: Literal["compare_page"] = "compare_page"
    a: str = Field(description="Job id of side A (its order and filters make the page).")
    b: str
    total: int = Field(description="Records of A matching the filters.")
    offset: int
    limit: int
    a_records: int
    b_records: int
    shared_items: int = Field(description="Item ids present in both jobs.")
    only_a_items: int
    only_b_items: int
    data: list[ComparePair]
