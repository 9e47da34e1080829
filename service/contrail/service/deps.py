"""FastAPI dependencies as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis

from contrail.core.jobs.store import AsyncJobStore
from contrail.core.storage import Storage
from contrail.service.auth import ApiKeys, token_matches
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
_metrics_bearer = HTTPBearer(
    auto_error=False, scheme_name="MetricsToken", description="CONTRAIL_METRICS_TOKEN"
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_keys(request: Request) -> ApiKeys:
    keys: ApiKeys = request.app.state.keys
    return keys


def client_address(request: Request) -> str:
    """The caller's address (the proxy's X-Forwarded-For when uvicorn trusts that proxy)."""
    return request.client.host if request.client else "unknown"


async def _checked(
    request: Request,
    store: AsyncJobStore,
    settings: ApiSettings,
    creds: HTTPAuthorizationCredentials | None,
    check: Callable[[str], str | None],
    what: str = "API key",
) -> str:
    """What `check` makes of the presented token, throttling addresses that keep failing.

    A throttled address is refused before its token is looked at, so answers cannot tell a
    right guess from a wrong one while the throttle lasts. A request without a token is not a
    guess and is not counted."""
    if creds is None or not creds.credentials:
        raise ApiError(
            401, f"missing {what}: send 'Authorization: Bearer <{what}>'", headers=_CHALLENGE
        )
    client = client_address(request)
    wait = await store.auth_blocked(client, settings.auth_failures_per_minute)
    if wait is not None:
        raise ApiError(
            429,
            f"too many failed authentications from {client}; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    found = check(creds.credentials)
    if found is None:
        await store.count_auth_failure(client)
        raise ApiError(401, f"invalid {what}", headers=_CHALLENGE)
    return found


async def get_tenant(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    return await _checked(request, store, settings, creds, get_keys(request).tenant)


async def metrics_access(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_metrics_bearer)],
) -> None:
    """/metrics needs its own token (API keys are not accepted); without one it is off."""
    token = settings.metrics_token
    if token is None:
        raise ApiError(404, "metrics are disabled: set CONTRAIL_METRICS_TOKEN to enable them")
    expected = token.get_secret_value()

    def check(given: str) -> str | None:
        return "metrics" if token_matches(given, expected) else None

    await _checked(request, store, settings, creds, check, "metrics token")


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
