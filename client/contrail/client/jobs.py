"""The ``jobs`` resource: create, look up, list, cancel, wait for, and read the output of jobs."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from tqdm.auto import tqdm

from contrail.client._base import NOT_GIVEN, NotGiven, RequestOptions, TimeoutTypes, check_id
from contrail.client._exceptions import WaitTimeoutError
from contrail.client._resource import AsyncAPIResource, SyncAPIResource
from contrail.client._response import async_to_raw_response_wrapper, to_raw_response_wrapper
from contrail.client.helpers import DatasetFormat, format_for_path, write_jsonl, write_parquet
from contrail.client.pagination import AsyncCursorPage, AsyncPaginator, SyncCursorPage
from contrail.client.types import (
    DatasetLocation,
    DecodingSettings,
    Deleted,
    Demonstration,
    Item,
    ItemError,
    Job,
    JobCreate,
    JobList,
    QualitySettings,
    RationaleRecord,
    TaskName,
)

__all__ = [
    "DEFAULT_MODEL",
    "AsyncJobs",
    "AsyncJobsWithRawResponse",
    "Jobs",
    "JobsWithRawResponse",
]

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_POLL_INTERVAL = 1.0


# ---------------------------------------------------------------------------------------------
# Non-I/O pieces shared by both twins
# ---------------------------------------------------------------------------------------------


def _create_options(
    *,
    model: str,
    task: TaskName | str,
    input_file_id: str | None,
    items: Sequence[Item | Mapping[str, Any]] | None,
    decoding: DecodingSettings | Mapping[str, Any] | None,
    demonstrations: Sequence[Demonstration | Mapping[str, Any]] | None,
    metadata: Mapping[str, str] | None,
    completion_window: str,
    idempotency_key: str | None,
    quality: QualitySettings | Mapping[str, Any] | None = None,
    template: str | None = None,
) -> RequestOptions:
    body = JobCreate.model_validate(
        {
            "model": model,
            "task": task,
            "input_file_id": input_file_id,
            "items": (
                [i.model_dump(exclude_none=True) if isinstance(i, Item) else i for i in items]
                if items is not None
                else None
            ),
            "decoding": (
                decoding.model_dump(by_alias=True)
                if isinstance(decoding, DecodingSettings)
                else (decoding or {})
            ),
            "demonstrations": (
                [d.model_dump() if isinstance(d, Demonstration) else d for d in demonstrations]
                if demonstrations is not None
                else None
            ),
            "metadata": dict(metadata) if metadata is not None else None,
            "completion_window": completion_window,
            "quality": (quality.model_dump() if isinstance(quality, QualitySettings) else quality),
            "template": template,
        }
    )
    # One key for every attempt: a retried create after a lost answer returns the same job.
    key = idempotency_key or f"contrail-{uuid.uuid4()}"
    return RequestOptions(
        "POST",
        "/v1/jobs",
        json=body.model_dump(mode="json", by_alias=True, exclude_none=True),
        headers={"Idempotency-Key": key},
    )


class _WaitProgress:
    """A progress bar of done/total rationales with the failed count and generation speed."""

    def __init__(self, job_id: str, enabled: bool) -> None:
        self.bar: tqdm[Any] = tqdm(
            total=None,
            unit="rationale",
            desc=f"job {job_id}",
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
        )
        self.t0: float | None = None
        self.tokens0 = 0

    def update(self, job: Job) -> None:
        now = time.monotonic()
        counts = job.request_counts
        tokens = job.usage.completion_tokens
        if self.t0 is None:
            self.t0, self.tokens0 = now, tokens
        elapsed = now - self.t0
        rate = (tokens - self.tokens0) / elapsed if elapsed > 0 else 0.0
        if self.bar.total != counts.total:
            self.bar.total = counts.total
        self.bar.n = counts.completed + counts.failed
        self.bar.set_postfix_str(
            f"{job.status.value} completed={counts.completed} failed={counts.failed} "
            f"total={counts.total} {rate:.1f} tok/s",
            refresh=False,
        )
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _local_path(url: str) -> Path | None:
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    return Path(url2pathname(parsed.path))


def _dataset_url(location: DatasetLocation, fmt: DatasetFormat) -> str | None:
    return location.jsonl_url if fmt == "jsonl" else location.parquet_url


def _presigned_get(url: str, timeout: TimeoutTypes | NotGiven) -> RequestOptions:
    return RequestOptions("GET", url, with_auth=False, timeout=timeout)


def _part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _write_records(
    records: Iterator[RationaleRecord] | list[RationaleRecord], path: Path, fmt: DatasetFormat
) -> None:
    part = _part_path(path)
    if fmt == "jsonl":
        write_jsonl(records, part)
    else:
        write_parquet(records, part)
    os.replace(part, path)


# ---------------------------------------------------------------------------------------------
# The resources
# ---------------------------------------------------------------------------------------------


class Jobs(SyncAPIResource):
    @cached_property
    def with_raw_response(self) -> JobsWithRawResponse:
        """The same methods, each returning an :class:`APIResponse` (status, headers, parse())."""
        return JobsWithRawResponse(self)

    def create(
        self,
        *,
        model: str = DEFAULT_MODEL,
        task: TaskName | str = TaskName.GENERIC,
        input_file_id: str | None = None,
        items: Sequence[Item | Mapping[str, Any]] | None = None,
        decoding: DecodingSettings | Mapping[str, Any] | None = None,
        demonstrations: Sequence[Demonstration | Mapping[str, Any]] | None = None,
        metadata: Mapping[str, str] | None = None,
        completion_window: str = "24h",
        idempotency_key: str | None = None,
        quality: QualitySettings | Mapping[str, Any] | None = None,
        template: str | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> Job:
        """Create a job from an uploaded file or inline items (``POST /v1/jobs``).

        The body is validated locally first (``pydantic.ValidationError`` on a bad setting). An
        idempotency key is generated once and sent with every retry. After
        ``completion_window`` ("24h", "90m", "7d") the job ends ``expired``. ``template`` is a
        prompt block template with {question}, {choices} and {answer} (docs/API.md), checked by
        the server (422 naming the problem). ``quality={"las": True}`` adds LAS to the manifest
        (docs/QUALITY.md)."""
        options = _create_options(
            model=model,
            task=task,
            input_file_id=input_file_id,
            items=items,
            decoding=decoding,
            demonstrations=demonstrations,
            metadata=metadata,
            completion_window=completion_window,
            idempotency_key=idempotency_key,
            quality=quality,
            template=template,
        )
        options.timeout = timeout
        return self._request(options, Job)

    def retrieve(self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> Job:
        """``GET /v1/jobs/{job_id}``."""
        path = f"/v1/jobs/{check_id('job_id', job_id)}"
        return self._get(path, cast_to=Job, timeout=timeout)

    def list(
        self,
        *,
        limit: int = 20,
        after: str | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> SyncCursorPage[Job]:
        """One page of jobs, newest first; iterating the page walks all later pages too."""
        params = {"limit": limit, "after": after}
        page = self._get("/v1/jobs", cast_to=JobList, params=params, timeout=timeout)
        return SyncCursorPage(
            data=page.data,
            has_more=page.has_more,
            last_id=page.last_id or (page.data[-1].id if page.data else None),
            fetch=lambda cursor: self.list(limit=limit, after=cursor, timeout=timeout),
        )

    def cancel(self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> Job:
        """``POST /v1/jobs/{job_id}/cancel``: the job goes to ``cancelling``, then ``cancelled``."""
        path = f"/v1/jobs/{check_id('job_id', job_id)}/cancel"
        return self._post(path, cast_to=Job, timeout=timeout)

    def delete(self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> Deleted:
        """``DELETE /v1/jobs/{job_id}``: a finished job and all its stored data."""
        path = f"/v1/jobs/{check_id('job_id', job_id)}"
        return self._delete(path, cast_to=Deleted, timeout=timeout)

    def resubmit(self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> Job:
        """``POST /v1/jobs/{job_id}/resubmit``: a new job over the failed (or, for a cancelled
        or expired job, unfinished) items of a finished one, with the same settings."""
        path = f"/v1/jobs/{check_id('job_id', job_id)}/resubmit"
        return self._post(path, cast_to=Job, timeout=timeout)

    def wait(
        self,
        job_id: str,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout: float | None = None,
        progress: bool = False,
    ) -> Job:
        """Poll until the job is completed, failed or cancelled and return it.

        ``progress=True`` draws a bar (done/total, failed, tokens/s) on standard error.
        Raises :class:`WaitTimeoutError` (holding the last job seen) after ``timeout`` seconds."""
        check_id("job_id", job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _WaitProgress(job_id, progress)
        try:
            while True:
                job = self.retrieve(job_id)
                bar.update(job)
                if job.status.terminal:
                    return job
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeoutError(
                        f"job {job_id} is still {job.status.value} after {timeout}s", job=job
                    )
                pause = poll_interval
                if deadline is not None:
                    pause = max(0.0, min(pause, deadline - time.monotonic()))
                time.sleep(pause)
        finally:
            bar.close()

    def results(
        self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> Iterator[RationaleRecord]:
        """Stream the job's records (what is finished so far; all once completed).

        The request is sent when iteration starts."""
        check_id("job_id", job_id)
        options = RequestOptions("GET", f"/v1/jobs/{job_id}/results", timeout=timeout)
        with self._client.stream(options) as response:
            for line in response.iter_lines():
                if line.strip():
                    yield RationaleRecord.model_validate_json(line)

    def errors(
        self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> Iterator[ItemError]:
        """Stream the job's per-item errors. The request is sent when iteration starts."""
        check_id("job_id", job_id)
        options = RequestOptions("GET", f"/v1/jobs/{job_id}/errors", timeout=timeout)
        with self._client.stream(options) as response:
            for line in response.iter_lines():
                if line.strip():
                    yield ItemError.model_validate_json(line)

    def dataset(
        self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> DatasetLocation:
        """Where the job's dataset files are (presigned S3 URLs or file:// URLs)."""
        path = f"/v1/jobs/{check_id('job_id', job_id)}/dataset"
        return self._get(path, cast_to=DatasetLocation, timeout=timeout)

    def download(
        self,
        job_id: str,
        path: str | os.PathLike[str],
        *,
        format: DatasetFormat | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> Path:
        """Save the job's dataset as JSONL or Parquet (by ``format`` or the path's suffix).
        ``timeout`` applies to each request it sends (the location, then the file).

        Copies the file the dataset location names (a local file:// path, or a presigned URL
        fetched without the API key); when the location has no such file (a job still running,
        a file:// URL from another machine), writes the records from the results stream."""
        fmt = format_for_path(path, format)
        target = Path(path)
        location = self.dataset(job_id, timeout=timeout)
        url = _dataset_url(location, fmt)
        part = _part_path(target)
        if url is not None:
            local = _local_path(url)
            if local is not None and local.is_file():
                shutil.copyfile(local, part)
                os.replace(part, target)
                return target
            if local is None:
                # Through the client's retry loop, without the API key (a presigned URL).
                request = _presigned_get(url, timeout)
                with self._client.stream(request) as response, part.open("wb") as f:
                    for chunk in response.iter_bytes():
                        f.write(chunk)
                os.replace(part, target)
                return target
        _write_records(list(self.results(job_id, timeout=timeout)), target, fmt)
        return target


class AsyncJobs(AsyncAPIResource):
    @cached_property
    def with_raw_response(self) -> AsyncJobsWithRawResponse:
        """The same methods, each returning an :class:`APIResponse` (status, headers, parse())."""
        return AsyncJobsWithRawResponse(self)

    async def create(
        self,
        *,
        model: str = DEFAULT_MODEL,
        task: TaskName | str = TaskName.GENERIC,
        input_file_id: str | None = None,
        items: Sequence[Item | Mapping[str, Any]] | None = None,
        decoding: DecodingSettings | Mapping[str, Any] | None = None,
        demonstrations: Sequence[Demonstration | Mapping[str, Any]] | None = None,
        metadata: Mapping[str, str] | None = None,
        completion_window: str = "24h",
        idempotency_key: str | None = None,
        quality: QualitySettings | Mapping[str, Any] | None = None,
        template: str | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> Job:
        """Create a job from an uploaded file or inline items (``POST /v1/jobs``).

        The body is validated locally first (``pydantic.ValidationError`` on a bad setting). An
        idempotency key is generated once and sent with every retry. After
        ``completion_window`` ("24h", "90m", "7d") the job ends ``expired``. ``template`` is a
        prompt block template with {question}, {choices} and {answer} (docs/API.md), checked by
        the server (422 naming the problem). ``quality={"las": True}`` adds LAS to the manifest
        (docs/QUALITY.md)."""
        options = _create_options(
            model=model,
            task=task,
            input_file_id=input_file_id,
            items=items,
            decoding=decoding,
            demonstrations=demonstrations,
            metadata=metadata,
            completion_window=completion_window,
            idempotency_key=idempotency_key,
            quality=quality,
            template=template,
        )
        options.timeout = timeout
        return await self._request(options, Job)

    async def retrieve(self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> Job:
        """``GET /v1/jobs/{job_id}``."""
        path = f"/v1/jobs/{check_id('job_id', job_id)}"
        return await self._get(path, cast_to=Job, timeout=timeout)

    def list(
        self,
        *,
        limit: int = 20,
        after: str | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> AsyncPaginator[Job]:
        """``await`` it for one page of jobs (newest first), or ``async for`` over every job."""
        return AsyncPaginator(lambda: self._list_page(limit, after, timeout))

    async def _list_page(
        self, limit: int, after: str | None, timeout: TimeoutTypes | NotGiven
    ) -> AsyncCursorPage[Job]:
        params = {"limit": limit, "after": after}
        page = await self._get("/v1/jobs", cast_to=JobList, params=params, timeout=timeout)
        return AsyncCursorPage(
            data=page.data,
            has_more=page.has_more,
            last_id=page.last_id or (page.data[-1].id if page.data else None),
            fetch=lambda cursor: self._list_page(limit, cursor, timeout),
        )

    async def cancel(self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> Job:
        """``POST /v1/jobs/{job_id}/cancel``: the job goes to ``cancelling``, then ``cancelled``."""
        path = f"/v1/jobs/{check_id('job_id', job_id)}/cancel"
        return await self._post(path, cast_to=Job, timeout=timeout)

    async def delete(self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> Deleted:
        """``DELETE /v1/jobs/{job_id}``: a finished job and all its stored data."""
        path = f"/v1/jobs/{check_id('job_id', job_id)}"
        return await self._delete(path, cast_to=Deleted, timeout=timeout)

    async def resubmit(self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> Job:
        """``POST /v1/jobs/{job_id}/resubmit``: a new job over the failed (or, for a cancelled
        or expired job, unfinished) items of a finished one, with the same settings."""
        path = f"/v1/jobs/{check_id('job_id', job_id)}/resubmit"
        return await self._post(path, cast_to=Job, timeout=timeout)

    async def wait(
        self,
        job_id: str,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout: float | None = None,
        progress: bool = False,
    ) -> Job:
        """Poll until the job is completed, failed or cancelled and return it.

        ``progress=True`` draws a bar (done/total, failed, tokens/s) on standard error.
        Raises :class:`WaitTimeoutError` (holding the last job seen) after ``timeout`` seconds."""
        check_id("job_id", job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _WaitProgress(job_id, progress)
        try:
            while True:
                job = await self.retrieve(job_id)
                bar.update(job)
                if job.status.terminal:
                    return job
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeoutError(
                        f"job {job_id} is still {job.status.value} after {timeout}s", job=job
                    )
                pause = poll_interval
                if deadline is not None:
                    pause = max(0.0, min(pause, deadline - time.monotonic()))
                await asyncio.sleep(pause)
        finally:
            bar.close()

    async def results(
        self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> AsyncIterator[RationaleRecord]:
        """Stream the job's records (what is finished so far; all once completed).

        The request is sent when iteration starts."""
        check_id("job_id", job_id)
        options = RequestOptions("GET", f"/v1/jobs/{job_id}/results", timeout=timeout)
        async with self._client.stream(options) as response:
            async for line in response.aiter_lines():
                if line.strip():
                    yield RationaleRecord.model_validate_json(line)

    async def errors(
        self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> AsyncIterator[ItemError]:
        """Stream the job's per-item errors. The request is sent when iteration starts."""
        check_id("job_id", job_id)
        options = RequestOptions("GET", f"/v1/jobs/{job_id}/errors", timeout=timeout)
        async with self._client.stream(options) as response:
            async for line in response.aiter_lines():
                if line.strip():
                    yield ItemError.model_validate_json(line)

    async def dataset(
        self, job_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> DatasetLocation:
        """Where the job's dataset files are (presigned S3 URLs or file:// URLs)."""
        path = f"/v1/jobs/{check_id('job_id', job_id)}/dataset"
        return await self._get(path, cast_to=DatasetLocation, timeout=timeout)

    async def download(
        self,
        job_id: str,
        path: str | os.PathLike[str],
        *,
        format: DatasetFormat | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> Path:
        """Save the job's dataset as JSONL or Parquet (by ``format`` or the path's suffix).
        ``timeout`` applies to each request it sends (the location, then the file).

        Copies the file the dataset location names (a local file:// path, or a presigned URL
        fetched without the API key); when the location has no such file (a job still running,
        a file:// URL from another machine), writes the records from the results stream."""
        fmt = format_for_path(path, format)
        target = Path(path)
        location = await self.dataset(job_id, timeout=timeout)
        url = _dataset_url(location, fmt)
        part = _part_path(target)
        # File work runs in a worker thread, so a large dataset never blocks the event loop.
        if url is not None:
            local = _local_path(url)
            if local is not None and await asyncio.to_thread(local.is_file):
                await asyncio.to_thread(shutil.copyfile, local, part)
                await asyncio.to_thread(os.replace, part, target)
                return target
            if local is None:
                # Through the client's retry loop, without the API key (a presigned URL).
                async with self._client.stream(_presigned_get(url, timeout)) as response:
                    f = await asyncio.to_thread(part.open, "wb")
                    try:
                        async for chunk in response.aiter_bytes():
                            await asyncio.to_thread(f.write, chunk)
                    finally:
                        await asyncio.to_thread(f.close)
                await asyncio.to_thread(os.replace, part, target)
                return target
        records = [r async for r in self.results(job_id, timeout=timeout)]
        await asyncio.to_thread(_write_records, records, target, fmt)
        return target


class JobsWithRawResponse:
    """``client.jobs.with_raw_response``: each method returns an :class:`APIResponse`."""

    def __init__(self, jobs: Jobs) -> None:
        self.create = to_raw_response_wrapper(jobs.create)
        self.retrieve = to_raw_response_wrapper(jobs.retrieve)
        self.list = to_raw_response_wrapper(jobs.list)
        self.cancel = to_raw_response_wrapper(jobs.cancel)
        self.delete = to_raw_response_wrapper(jobs.delete)
        self.resubmit = to_raw_response_wrapper(jobs.resubmit)
        self.dataset = to_raw_response_wrapper(jobs.dataset)


class AsyncJobsWithRawResponse:
    """``client.jobs.with_raw_response``: each method returns an :class:`APIResponse`."""

    def __init__(self, jobs: AsyncJobs) -> None:
        self.create = async_to_raw_response_wrapper(jobs.create)
        self.retrieve = async_to_raw_response_wrapper(jobs.retrieve)
        self.list = async_to_raw_response_wrapper(jobs.list)
        self.cancel = async_to_raw_response_wrapper(jobs.cancel)
        self.delete = async_to_raw_response_wrapper(jobs.delete)
        self.resubmit = async_to_raw_response_wrapper(jobs.resubmit)
        self.dataset = async_to_raw_response_wrapper(jobs.dataset)
