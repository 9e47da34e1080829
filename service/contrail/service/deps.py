"""FastAPI dependencies as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis

from contrail.core.jobs.store import AsyncJobStore
from contrail.core.storage import Storage
from contrail.service.auth import tenant_for
from contrail.service.errors import ApiError
from contrail.service.settings import ApiSettings, get_settings

SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


def get_redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


def get_store(request: Request) -> AsyncJobStore:
    store: AsyncJobStore = request.app.state.store
    return store


RedisDep = Annotated[Redis, Depends(get_redis)]
StorageDep = Annotated[Storage, Depends(get_storage)]
StoreDep = Annotated[AsyncJobStore, Depends(get_store)]

_bearer = HTTPBearer(auto_error=False, description="API key")


def get_tenant(
    settings: SettingsDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    challenge = {"WWW-Authenticate": "Bearer"}
    if creds is None or not creds.credentials:
        raise ApiError(
            401, "missing API key: send 'Authorization: Bearer <key>'", headers=challenge
        )
    tenant = tenant_for(creds.credentials, settings.api_keys, settings.api_keys_file)
    if tenant is None:
        raise ApiError(401, "invalid API key", headers=challenge)
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]


async def rate_limited(tenant: TenantDep, store: StoreDep, settings: SettingsDep) -> None:
    """Per-tenant request rate limit on POST routes (429 with Retry-After)."""
    wait = await store.hit_rate(tenant, settings.rate_limit_per_minute)
    if wait is not None:
        raise ApiError(
            429,
            f"rate limit of {settings.rate_limit_per_minute} requests per minute exceeded",
            headers={"Retry-After": str(wait)},
        )
