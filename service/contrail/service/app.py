"""The FastAPI application: combines the routers and turns every error into an ErrorResponse."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from obstore.exceptions import GenericError
from redis import Redis as SyncRedis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from contrail.client.types import ErrorDetail, ErrorResponse
from contrail.core.jobs.reconciler import Reconciler, ReconcilerThread
from contrail.core.jobs.store import AsyncJobStore
from contrail.core.storage import Storage, StorageUnavailable
from contrail.service.auth import ApiKeys
from contrail.service.errors import ApiError, error_body
from contrail.service.limits import UPLOAD_PATH, BodyLimit
from contrail.service.metrics import API_ERRORS, KEY_RELOAD_ERRORS
from contrail.service.routers import files, health, jobs, models, ui
from contrail.service.settings import ApiSettings, get_settings
from contrail.service.upload_slots import UploadSlots

log = logging.getLogger("contrail.service")

AUTH_ERRORS = {
    "401": "Missing or invalid credentials",
    "429": "Rate limited: too many failed authentications from this address, or the "
    "tenant's request rate",
}


def _answer(
    status: int,
    message: str,
    type: str | None = None,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = error_body(status, message, type, details)
    API_ERRORS.labels(str(status), body["error"]["type"]).inc()
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[object, ...] | list[object]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def _document_errors(app: FastAPI) -> None:
    """Document FastAPI's automatic 422 answers with the ErrorResponse they really carry."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        ref = {"$ref": "#/components/schemas/ErrorResponse"}
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                resp = op.get("responses", {}).get("422")
                if resp is not None:
                    resp["content"] = {"application/json": {"schema": ref}}
                if op.get("security"):  # any authenticated route: 401, and 429 when throttled
                    for code, what in AUTH_ERRORS.items():
                        op["responses"].setdefault(
                            code,
                            {"description": what, "content": {"application/json": {"schema": ref}}},
                        )
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        comps.pop("HTTPValidationError", None)
        comps.pop("ValidationError", None)
        comps.setdefault(
            "ErrorResponse",
            ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}"),
        )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def start_reconciler(s: ApiSettings) -> ReconcilerThread:
    """The API runs the reconciler too, so jobs of models with no live worker still expire and
    orphaned inputs are removed (one reconciler acts at a time: a leader lease in Redis)."""
    r = SyncRedis.from_url(s.redis_url, socket_timeout=10, socket_connect_timeout=5)
    reconciler = Reconciler(
        r,
        Storage(s.storage_url, retry_for_s=10),
        owner=f"api-{socket.gethostname()}-{os.getpid()}",
        stall_s=s.reconcile_stall_s,
        lease_s=max(3 * s.reconcile_interval_s, 5.0),
    )
    thread = ReconcilerThread(reconciler, s.reconcile_interval_s)
    thread.start()
    return thread


def _job_store_redis(s: ApiSettings) -> Redis:
    """The API's Redis client. A connection broken by a Redis restart is retried (briefly) before
    answering 503. The pool is bounded and makes a request wait for a free connection: redis-py's
    default pool answers "Too many connections" (a 503 here) past 100 concurrent commands."""
    pool = BlockingConnectionPool.from_url(
        s.redis_url,
        max_connections=s.redis_max_connections,
        timeout=10,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return Redis.from_pool(pool)


def _open_state(app: FastAPI, s: ApiSettings) -> None:
    """What the routers find on `app.state`: keys, the job store, upload slots, storage."""
    # Uploads are validated in worker threads (CPU-bound Python); the event loop waits for the
    # GIL up to one switch interval each time it needs it. 1 ms instead of 5 ms keeps other
    # requests' latency low during a large upload (bench/upload.py measures it).
    sys.setswitchinterval(0.001)
    # Bad keys (too short, a tenant name with ':') stop the start-up with the reason.
    app.state.keys = ApiKeys(s.api_keys, s.api_keys_file, on_reload_error=KEY_RELOAD_ERRORS.inc)
    app.state.redis = _job_store_redis(s)
    app.state.store = AsyncJobStore(app.state.redis, s.rate_window_s)
    app.state.upload_slots = UploadSlots(s.max_concurrent_uploads)
    app.state.storage = Storage(
        s.storage_url,
        request_timeout_s=s.storage_timeout_s,
        public_url=s.storage_public_url,
    )


# ----------------------------------------------------------------------------- error answers
# Every error leaves as an ErrorResponse (contrail.client.types), whoever raised it.


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _answer(exc.status_code, exc.message, exc.type, exc.details, dict(exc.headers or {}))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _answer(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        ErrorDetail(field=_field(e.get("loc", ())), code=str(e.get("type")), message=e["msg"])
        for e in exc.errors()
    ][:100]
    first = details[0] if details else None
    message = (
        f"invalid request: {first.field or 'body'}: {first.message}" if first else "invalid request"
    )
    return _answer(422, message, "invalid_request", details)


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable on %s %s: %s", request.method, request.url.path, exc)
    return _answer(503, "the job store is unavailable; retry shortly", headers={"Retry-After": "2"})


async def _storage_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("storage unavailable on %s %s: %s", request.method, request.url.path, exc)
    return _answer(
        503, "object storage is unavailable; retry shortly", headers={"Retry-After": "5"}
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _answer(500, "internal error", "server_error")


ERROR_HANDLERS: tuple[tuple[type[Exception], Any], ...] = (
    (ApiError, _api_error),
    (StarletteHTTPException, _http_error),
    (RequestValidationError, _validation),
    (RedisConnectionError, _redis_down),
    (RedisTimeoutError, _redis_down),
    (StorageUnavailable, _storage_down),
    (GenericError, _storage_down),
    (Exception, _unexpected),
)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The API as an ASGI app (``uvicorn --factory contrail.service.app:create_app``, or
    ``contrail serve api``). `settings` replaces the environment's, for tests and embedding."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or get_settings()
        _open_state(app, s)
        reconciler = start_reconciler(s)
        try:
            yield
        finally:
            reconciler.stop()
            await app.state.redis.aclose()

    app = FastAPI(
        title="contrail",
        version="1",
        summary="Batch rationale generation with contrastive decoding (SCOTT).",
        lifespan=lifespan,
    )
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    for router in (files.router, jobs.router, models.router, health.router, ui.router):
        app.include_router(router)

    def body_limit(method: str, path: str) -> int:
        s = settings or get_settings()
        if method == "POST" and path.rstrip("/") == UPLOAD_PATH:
            return s.max_upload_bytes
        return s.max_request_bytes

    app.add_middleware(BodyLimit, limit_for=body_limit, answer=_answer)
    _document_errors(app)
    for exc_class, handler in ERROR_HANDLERS:
        app.add_exception_handler(exc_class, handler)
    return app
