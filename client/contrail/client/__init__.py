"""Client SDK, CLI and the wire/record schemas shared by every part of contrail.

    from contrail.client import Client

    with Client() as client:  # CONTRAIL_API_KEY / CONTRAIL_BASE_URL from the environment
        f = client.files.upload("items.jsonl", task="strategyqa")
        job = client.jobs.create(input_file_id=f.id, task="strategyqa")
        job = client.jobs.wait(job.id, progress=True)
        for record in client.jobs.results(job.id):
            print(record.answer, record.rationale)

    # Per call: a timeout, or the HTTP answer beside the parsed value (as in openai-python).
    job = client.jobs.retrieve(job.id, timeout=5.0)
    raw = client.jobs.with_raw_response.retrieve(job.id)
    print(raw.status_code, raw.headers["content-type"], raw.parse().status)

This package imports nothing heavier than httpx, pydantic and tqdm.
"""

from contrail.client._base import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    NOT_GIVEN,
    NotGiven,
)
from contrail.client._client import AsyncClient, Client
from contrail.client._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ContrailError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UnprocessableEntityError,
    WaitTimeoutError,
)
from contrail.client._response import APIResponse
from contrail.client.helpers import to_hf_dataset, to_pandas
from contrail.client.jobs import DEFAULT_MODEL
from contrail.client.pagination import AsyncCursorPage, AsyncPaginator, SyncCursorPage

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MODEL",
    "DEFAULT_TIMEOUT",
    "NOT_GIVEN",
    "APIConnectionError",
    "APIError",
    "APIResponse",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncCursorPage",
    "AsyncPaginator",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "ContrailError",
    "InternalServerError",
    "NotFoundError",
    "NotGiven",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "SyncCursorPage",
    "UnprocessableEntityError",
    "WaitTimeoutError",
    "to_hf_dataset",
    "to_pandas",
]
