"""The ``models`` resource: which models live workers serve."""

from __future__ import annotations

from functools import cached_property

from contrail.client._base import NOT_GIVEN, NotGiven, TimeoutTypes
from contrail.client._resource import AsyncAPIResource, SyncAPIResource
from contrail.client._response import async_to_raw_response_wrapper, to_raw_response_wrapper
from contrail.client.types import ModelList

__all__ = ["AsyncModels", "AsyncModelsWithRawResponse", "Models", "ModelsWithRawResponse"]


class Models(SyncAPIResource):
    @cached_property
    def with_raw_response(self) -> ModelsWithRawResponse:
        """The same methods, each returning an :class:`APIResponse` (status, headers, parse())."""
        return ModelsWithRawResponse(self)

    def list(self, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> ModelList:
        """The models that live workers serve (``GET /v1/models``)."""
        return self._get("/v1/models", cast_to=ModelList, timeout=timeout)


class AsyncModels(AsyncAPIResource):
    @cached_property
    def with_raw_response(self) -> AsyncModelsWithRawResponse:
        """The same methods, each returning an :class:`APIResponse` (status, headers, parse())."""
        return AsyncModelsWithRawResponse(self)

    async def list(self, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> ModelList:
        """The models that live workers serve (``GET /v1/models``)."""
        return await self._get("/v1/models", cast_to=ModelList, timeout=timeout)


class ModelsWithRawResponse:
    """``client.models.with_raw_response``: each method returns an :class:`APIResponse`."""

    def __init__(self, models: Models) -> None:
        self.list = to_raw_response_wrapper(models.list)


class AsyncModelsWithRawResponse:
    """``client.models.with_raw_response``: each method returns an :class:`APIResponse`."""

    def __init__(self, models: AsyncModels) -> None:
        self.list = async_to_raw_response_wrapper(models.list)
