"""The viewer's JSON endpoints: pages of a job's records and errors, one item, a finished job's
manifest and Parquet file, and two jobs compared item by item. Same API-key authentication and
tenant isolation as the rest of the API (another tenant's job is a 404).

Job listing, retrieval and cancelling are the `/v1/jobs` endpoints; these only add what reading
a job's outputs page by page needs. Every storage read goes through `contrail.service.viewer.data`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from contrail.client.types import FinishReason, ItemError, RationaleRecord, Tag
from contrail.core.quality_signals import record_signals
from contrail.service.deps import SettingsDep, StoreDep, TenantDep
from contrail.service.errors import ApiError, error_responses
from contrail.service.viewer.data import JobData
from contrail.service.viewer.query import Filters
from contrail.service.viewer.schemas import (
    ComparePage,
    ComparePair,
    ErrorPage,
    ItemView,
    ManifestView,
    RecordPage,
    RecordRow,
)

router = APIRouter(prefix="/v1/viewer", tags=["viewer"])

PARQUET = "application/vnd.apache.parquet"


def get_job_data(request: Request, settings: SettingsDep) -> JobData:
    """One reader (and cache) per application, made on first use."""
    data: JobData | None = getattr(request.app.state, "viewer_data", None)
    if data is None:
        data = JobData(
            request.app.state.storage, request.app.state.store, settings.viewer_cache_mb << 20
        )
        request.app.state.viewer_data = data
    return data


DataDep = Annotated[JobData, Depends(get_job_data)]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000, description="Rows to skip.")]
Limit = Annotated[int, Query(ge=1, le=200, description="Rows per page.")]
TagQ = Annotated[Tag | None, Query(description="Only records with this tag.")]
FinishQ = Annotated[FinishReason | None, Query(description="Only records that ended so.")]
AnswerQ = Annotated[
    str | None,
    Query(min_length=1, max_length=256, description="Only rationales for this answer (any case)."),
]
TextQ = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=200,
        description="Only records whose item id, question or rationale contains this (any case).",
    ),
]


async def _own_job(store: StoreDep, tenant: str, job_id: str) -> None:
    if await store.job(tenant, job_id) is None:
        raise ApiError(404, f"no job {job_id!r}")


def _filters(
    tag: Tag | None, finish_reason: FinishReason | None, answer: str | None, q: str | None
) -> Filters:
    return Filters(
        tag=tag.value if tag else None,
        finish_reason=finish_reason.value if finish_reason else None,
        answer=answer,
        text=q,
    )


def _row(row: int, rec: Mapping[str, Any]) -> RecordRow:
    record = RationaleRecord.model_validate(rec)
    return RecordRow(row=row, record=record, signals=record_signals(record))


@router.get(
    "/jobs/{job_id}/records",
    operation_id="viewer_records",
    responses=error_responses(401, 404, 422),
)
async def records(
    job_id: str,
    tenant: TenantDep,
    store: StoreDep,
    data: DataDep,
    offset: Offset = 0,
    limit: Limit = 50,
    tag: TagQ = None,
    finish_reason: FinishQ = None,
    answer: AnswerQ = None,
    q: TextQ = None,
) -> RecordPage:
    """A page of the job's rationales in dataset order (what is stored so far while it runs)."""
    await _own_job(store, tenant, job_id)
    source, page = await data.records_page(
        job_id, _filters(tag, finish_reason, answer, q), offset, limit
    )
    return RecordPage(
        job_id=job_id,
        source=source,  # type: ignore[arg-type]
        total=page.total,
        offset=offset,
        limit=limit,
        data=[_row(r, rec) for r, rec in zip(page.rows, page.records, strict=True)],
    )


@router.get(
    "/jobs/{job_id}/item", operation_id="viewer_item", responses=error_responses(401, 404, 422)
)
async def item(
    job_id: str,
    tenant: TenantDep,
    store: StoreDep,
    data: DataDep,
    item_id: Annotated[str, Query(min_length=1, max_length=256)],
) -> ItemView:
    """Every rationale of one item (factual, counterfactual) and its errors."""
    await _own_job(store, tenant, job_id)
    only = Filters(item_ids=frozenset([item_id]))
    _, recs = await data.records_page(job_id, only, 0, None)
    _, errs = await data.errors_page(job_id, only, 0, None)
    if not recs.records and not errs.records:
        raise ApiError(404, f"job {job_id!r} has no record of item {item_id!r} (yet)")
    return ItemView(
        job_id=job_id,
        item_id=item_id,
        records=[_row(r, rec) for r, rec in zip(recs.rows, recs.records, strict=True)],
        errors=[ItemError.model_validate(e) for e in errs.records],
    )


@router.get(
    "/jobs/{job_id}/errors", operation_id="viewer_errors", responses=error_responses(401, 404, 422)
)
async def errors(
    job_id: str,
    tenant: TenantDep,
    store: StoreDep,
    data: DataDep,
    offset: Offset = 0,
    limit: Limit = 50,
) -> ErrorPage:
    """A page of the job's per-item errors."""
    await _own_job(store, tenant, job_id)
    source, page = await data.errors_page(job_id, Filters(), offset, limit)
    return ErrorPage(
        job_id=job_id,
        source=source,  # type: ignore[arg-type]
        total=page.total,
        offset=offset,
        limit=limit,
        data=[ItemError.model_validate(e) for e in page.records],
    )


@router.get(
    "/jobs/{job_id}/manifest", operation_id="viewer_manifest", responses=error_responses(401, 404)
)
async def manifest(job_id: str, tenant: TenantDep, store: StoreDep, data: DataDep) -> ManifestView:
    """The manifest (quality signals, LAS where computed, timings) once the job is finalized."""
    await _own_job(store, tenant, job_id)
    return ManifestView(job_id=job_id, manifest=await data.manifest(job_id))


@router.get(
    "/jobs/{job_id}/dataset.parquet",
    operation_id="viewer_parquet",
    response_class=StreamingResponse,
    responses={
        200: {"content": {PARQUET: {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses(401, 404),
    },
)
async def parquet(
    job_id: str, tenant: TenantDep, store: StoreDep, data: DataDep
) -> StreamingResponse:
    """The finished job's dataset as Parquet (404 until it is finalized)."""
    await _own_job(store, tenant, job_id)
    body = await data.parquet(job_id)
    if body is None:
        raise ApiError(404, f"job {job_id!r} has no Parquet dataset until it is finalized")
    return StreamingResponse(
        body,
        media_type=PARQUET,
        headers={"Content-Disposition": f'attachment; filename="{job_id}.parquet"'},
    )


@router.get("/compare", operation_id="viewer_compare", responses=error_responses(401, 404, 422))
async def compare(
    tenant: TenantDep,
    store: StoreDep,
    data: DataDep,
    a: Annotated[str, Query(min_length=1, max_length=128, description="Job id of side A.")],
    b: Annotated[str, Query(min_length=1, max_length=128, description="Job id of side B.")],
    offset: Offset = 0,
    limit: Limit = 20,
    tag: TagQ = None,
    finish_reason: FinishQ = None,
    answer: AnswerQ = None,
    q: TextQ = None,
) -> ComparePage:
    """Two jobs over the same items, record by record: a page of A's records (filtered) with
    B's record of the same item and tag beside each."""
    await _own_job(store, tenant, a)
    await _own_job(store, tenant, b)
    _, page_a = await data.records_page(a, _filters(tag, finish_reason, answer, q), offset, limit)
    ids = frozenset(str(r["item_id"]) for r in page_a.records)
    _, page_b = await data.records_page(b, Filters(item_ids=ids), 0, None)
    by_key = {
        (str(rec["item_id"]), str(rec["tag"])): _row(r, rec)
        for r, rec in zip(page_b.rows, page_b.records, strict=True)
    }
    pairs = []
    for r, rec in zip(page_a.rows, page_a.records, strict=True):
        key = (str(rec["item_id"]), str(rec["tag"]))
        pairs.append(ComparePair(item_id=key[0], tag=key[1], a=_row(r, rec), b=by_key.get(key)))
    ids_a = await data.item_ids(a)
    ids_b = await data.item_ids(b)
    set_a, set_b = set(ids_a), set(ids_b)
    return ComparePage(
        a=a,
        b=b,
        total=page_a.total,
        offset=offset,
        limit=limit,
        a_records=len(ids_a),
        b_records=len(ids_b),
        shared_items=len(set_a & set_b),
        only_a_items=len(set_a - set_b),
        only_b_items=len(set_b - set_a),
        data=pairs,
    )
