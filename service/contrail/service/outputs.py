"""What a job has produced, as the API hands it out: its records and errors streamed (the merged
files once it has ended, the counted shard attempts while it runs) and where its dataset files
are (presigned S3 URLs, or file:// URLs for local storage)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from contrail.client.types import DatasetLocation
from contrail.core.jobs import states
from contrail.core.jobs.outputs import counted_keys
from contrail.core.jobs.record import JobRecord
from contrail.core.jobs.store import AsyncJobStore
from contrail.core.storage import Storage, dataset_keys

DATASET_FILES = ("dataset", "parquet", "errors", "manifest")


async def stream(
    store: AsyncJobStore, storage: Storage, record: JobRecord, *, errors: bool
) -> AsyncIterator[bytes]:
    """The job's records (or errors) as JSON lines, what is finished so far."""
    merged = dataset_keys(record.id)["errors" if errors else "dataset"]
    if record.status in states.TERMINAL and await storage.exists_async(merged):
        async for chunk in storage.stream_async(merged):
            yield chunk
        return
    for key in counted_keys(record.id, await store.counted(record.id), errors=errors):
        async for chunk in storage.stream_async(key):
            yield chunk


async def dataset_location(
    storage: Storage, record: JobRecord, url_expiry_s: int
) -> DatasetLocation:
    """URLs of the dataset files once the job has ended and its manifest is written; None
    while it runs."""
    ks = dataset_keys(record.id)
    if record.status not in states.TERMINAL or not await storage.exists_async(ks["manifest"]):
        return DatasetLocation(
            job_id=record.id, jsonl_url=None, parquet_url=None, errors_url=None, manifest_url=None
        )
    urls = await storage.urls_async([ks[k] for k in DATASET_FILES], url_expiry_s)
    expires = int(time.time()) + url_expiry_s if storage.scheme != "file" else None
    jsonl, parquet, errors, manifest = urls
    return DatasetLocation(
        job_id=record.id,
        jsonl_url=jsonl,
        parquet_url=parquet,
        errors_url=errors,
        manifest_url=manifest,
        expires_at=expires,
    )
