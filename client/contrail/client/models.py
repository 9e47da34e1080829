"""The ``models`` resource: which models live workers serve."""

from __future__ import annotations

from contrail.client._base import AsyncAPI, RequestOptions, SyncAPI
from contrail.client.types import ModelList

__all__ = ["AsyncModels", "Models"]


class Models:
    def __init__(self, client: SyncAPI) -> None:
        self._client = client

    def list(self) -> ModelList:
        """The models that live workers serve (``GET /v1/models``)."""
        response = self._client.request(RequestOptions("GET", "/v1/models"))
        return ModelList.model_validate_json(response.content)


class AsyncModels:
    def __init__(self, client: AsyncAPI) -> None:
        self._client = client

    async def list(self) -> ModelList:
        """The models that live workers serve (``GET /v1/models``)."""
        response = await self._client.request(RequestOptions("GET", "/v1/models"))
        return ModelList.model_validate_json(response.content)
