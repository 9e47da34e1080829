"""The typed request helpers every resource uses: ``_get`` / ``_post`` / ``_delete`` with a
``cast_to`` model, as openai-python's resources do.

Each sends one request through the client's retry loop, hands the answer to raw-response
capture (``with_raw_response``, see ``_response.py``) and parses it into ``cast_to``; the
resources keep only what is theirs (paths, bodies, streaming).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import pydantic

from contrail.client._base import (
    NOT_GIVEN,
    AsyncAPI,
    NotGiven,
    RequestOptions,
    SyncAPI,
    TimeoutTypes,
)
from contrail.client._response import record_response

__all__ = ["AsyncAPIResource", "SyncAPIResource"]

M = TypeVar("M", bound=pydantic.BaseModel)


class SyncAPIResource:
    def __init__(self, client: SyncAPI) -> None:
        self._client = client

    def _request(self, options: RequestOptions, cast_to: type[M]) -> M:
        response = self._client.request(options)
        record_response(response)
        return cast_to.model_validate_json(response.content)

    def _get(
        self,
        path: str,
        *,
        cast_to: type[M],
        params: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> M:
        return self._request(RequestOptions("GET", path, params=params, timeout=timeout), cast_to)

    def _post(
        self, path: str, *, cast_to: type[M], timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> M:
        return self._request(RequestOptions("POST", path, timeout=timeout), cast_to)

    def _delete(
        self, path: str, *, cast_to: type[M], timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> M:
        return self._request(RequestOptions("DELETE", path, timeout=timeout), cast_to)


class AsyncAPIResource:
    def __init__(self, client: AsyncAPI) -> None:
        self._client = client

    async def _request(self, options: RequestOptions, cast_to: type[M]) -> M:
        response = await self._client.request(options)
        record_response(response)
        return cast_to.model_validate_json(response.content)

    async def _get(
        self,
        path: str,
        *,
        cast_to: type[M],
        params: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> M:
        options = RequestOptions("GET", path, params=params, timeout=timeout)
        return await self._request(options, cast_to)

    async def _post(
        self, path: str, *, cast_to: type[M], timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> M:
        return await self._request(RequestOptions("POST", path, timeout=timeout), cast_to)

    async def _delete(
        self, path: str, *, cast_to: type[M], timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> M:
        return await self._request(RequestOptions("DELETE", path, timeout=timeout), cast_to)
