"""Models the deployment serves: those announced by live workers (heartbeat with a TTL) and
those it declares (CONTRAIL_DECLARED_MODELS: accepted while no worker is live), each with its
live worker count and its queue backlog."""

from __future__ import annotations

from fastapi import APIRouter

from contrail.client.types import ModelInfo, ModelList
from contrail.service.deps import SettingsDep, StoreDep, TenantDep
from contrail.service.errors import error_responses

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", operation_id="list_models", responses=error_responses(401))
async def list_models(tenant: TenantDep, settings: SettingsDep, store: StoreDep) -> ModelList:
    served = await store.served_models()
    declared = settings.declared
    backlogs = await store.backlogs([*served, *declared])
    return ModelList(
        data=[
            ModelInfo(
                id=m,
                workers=served.get(m, 0),
                declared=m in declared,
                backlog=backlogs.get(m, 0),
            )
            for m in sorted({*served, *declared})
        ]
    )
