"""Models the deployment serves: those announced by live workers (heartbeat with a TTL)."""

from __future__ import annotations

from fastapi import APIRouter

from contrail.client.types import ModelInfo, ModelList
from contrail.service.deps import StoreDep, TenantDep
from contrail.service.errors import error_responses

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", operation_id="list_models", responses=error_responses(401))
async def list_models(tenant: TenantDep, store: StoreDep) -> ModelList:
    served = await store.served_models()
    return ModelList(data=[ModelInfo(id=m, workers=n) for m, n in sorted(served.items())])
