"""Liveness and readiness (no authentication) and Prometheus metrics (their own token)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from contrail.service.deps import RedisDep, StorageDep, StoreDep, metrics_access
from contrail.service.errors import error_responses
from contrail.service.metrics import render

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    responses={503: {"description": "Redis or storage unreachable"}},
)
async def readyz(redis: RedisDep, storage: StorageDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(redis.ping(), timeout=3)  # type: ignore[misc]
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    try:
        await storage.ping_async()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **error_responses(401, 404, 429),
    },
    dependencies=[Depends(metrics_access)],
)
async def metrics(redis: RedisDep, store: StoreDep) -> Response:
    return Response(await render(redis, store), media_type=CONTENT_TYPE_LATEST)
