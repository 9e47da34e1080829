"""The ``files`` resource: upload an input (streamed), look one up, delete one.

What can be uploaded: a path, bytes or a binary file object holding JSON lines, a JSON array,
Parquet or any of them gzip-compressed (the server detects which); or records: an iterable of
dicts, a pandas DataFrame or a ``datasets.Dataset``, sent as JSON lines while they are read
(no temporary file). pandas and datasets are never imported here: they are recognised by what
they have (duck typing), so the SDK installs without them.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from contrail.client._base import NOT_GIVEN, NotGiven, RequestOptions, TimeoutTypes, check_id
from contrail.client._resource import AsyncAPIResource, SyncAPIResource
from contrail.client._response import async_to_raw_response_wrapper, to_raw_response_wrapper
from contrail.client.types import Deleted, FileObject, TaskName

__all__ = [
    "AsyncFiles",
    "AsyncFilesWithRawResponse",
    "FileInput",
    "Files",
    "FilesWithRawResponse",
]

FileInput = str | os.PathLike[str] | bytes | IO[bytes] | Iterable[Mapping[str, Any]] | Any
"""A path, the file's bytes or a binary file object (read from its current position); or
records: an iterable of dicts, a pandas DataFrame, a ``datasets.Dataset``."""

CHUNK_SIZE = 1 << 20
ROWS_PER_SLICE = 1_000  # DataFrame rows converted to dicts at a time
# Uploads at least this large show a progress bar when ``progress`` is left as ``None`` and
# standard error is a terminal.
PROGRESS_THRESHOLD = 8 << 20

_MEDIA_TYPES = {
    ".parquet": "application/vnd.apache.parquet",
    ".pq": "application/vnd.apache.parquet",
    ".gz": "application/gzip",
    ".json": "application/json",
}


def _is_dataframe(obj: Any) -> bool:
    return hasattr(obj, "iloc") and hasattr(obj, "columns") and hasattr(obj, "to_dict")


def _is_hf_dataset(obj: Any) -> bool:
    return hasattr(obj, "column_names") and hasattr(obj, "features") and hasattr(obj, "__iter__")


def _plain(value: Any) -> Any:
    """A value JSON can hold: numpy scalars and arrays (what pandas and datasets hand out) as
    Python values and lists, NaN (pandas' missing value) as None."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _plain(value.tolist())
    return value


def _row_line(row: Any) -> bytes:
    if not isinstance(row, Mapping):
        raise TypeError(f"records must be mappings (dicts), got {type(row).__name__}")
    # Missing values are left out, as if the column were absent for this record.
    record = {str(k): v for k, v in ((k, _plain(v)) for k, v in row.items()) if v is not None}
    return json.dumps(record, ensure_ascii=False, default=str).encode("utf-8") + b"\n"


def _dataframe_rows(frame: Any) -> Iterator[Mapping[str, Any]]:
    for start in range(0, len(frame), ROWS_PER_SLICE):
        yield from frame.iloc[start : start + ROWS_PER_SLICE].to_dict(orient="records")


class _Upload:
    """An upload source. Paths, bytes, seekable files and re-iterable records are streamed again
    from their start on every attempt; a one-shot source (an iterator, a pipe) is sent once and
    its request is not retried."""

    def __init__(self, file: Any, filename: str | None) -> None:
        self.data: bytes | None = None
        self.path: Path | None = None
        self.fileobj: IO[bytes] | None = None
        self.rows: Callable[[], Iterable[Any]] | None = None
        self.start = 0
        self.size: int | None = None
        self.retryable = True
        if isinstance(file, bytes | bytearray | memoryview):
            self.data = bytes(file)
            self.size = len(self.data)
            self.filename = filename or "upload.jsonl"
        elif isinstance(file, str | os.PathLike):
            self.path = Path(file)
            if not self.path.is_file():
                raise FileNotFoundError(f"No such file: {self.path}")
            self.size = self.path.stat().st_size
            self.filename = filename or self.path.name
        elif hasattr(file, "read"):
            self.fileobj = file
            seekable = getattr(file, "seekable", lambda: False)()
            if seekable:
                self.start = file.tell()
                self.size = file.seek(0, os.SEEK_END) - self.start
                file.seek(self.start)
            else:
                self.retryable = False
            name = getattr(file, "name", None)
            self.filename = filename or (
                Path(name).name if isinstance(name, str) else "upload.jsonl"
            )
        elif _is_dataframe(file):
            frame = file
            self.rows = lambda: _dataframe_rows(frame)
            self.filename = filename or "dataframe.jsonl"
        elif _is_hf_dataset(file) or (
            isinstance(file, Iterable) and not isinstance(file, str | Mapping)
        ):
            records = file
            if iter(records) is records:  # an iterator or generator: one pass only
                self.retryable = False
            self.rows = lambda: records
            self.filename = filename or "records.jsonl"
        else:
            raise TypeError(
                "upload takes a path, bytes, a binary file object, an iterable of dicts, a "
                f"pandas DataFrame or a datasets.Dataset; got {type(file).__name__}"
            )

    def progress_bar(self, progress: bool | None) -> tqdm[Any] | None:
        if progress is None:
            progress = (self.size or 0) >= PROGRESS_THRESHOLD and sys.stderr.isatty()
        if not progress or self.data is not None:
            return None
        return tqdm(
            total=self.size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"upload {self.filename}",
            file=sys.stderr,
            leave=False,
        )

    def chunks(self, bar: tqdm[Any] | None) -> Iterator[bytes]:
        if bar is not None:
            bar.reset(total=self.size)
        if self.path is not None:
            with self.path.open("rb") as f:
                yield from _read_chunks(f, bar)
        elif self.fileobj is not None:
            if self.retryable:
                self.fileobj.seek(self.start)
            yield from _read_chunks(self.fileobj, bar)
        elif self.rows is not None:
            yield from _record_chunks(self.rows(), bar)

    async def achunks(self, bar: tqdm[Any] | None) -> AsyncIterator[bytes]:
        # Disk reads and row conversion run in a worker thread, one chunk at a time, so a large
        # upload never blocks the event loop.
        chunks = self.chunks(bar)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk

    def options(
        self,
        task: TaskName | str,
        content: Callable[[], Any],
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> RequestOptions:
        headers = {"Content-Type": self._media_type()}
        if self.size is not None:
            headers["Content-Length"] = str(self.size)
        return RequestOptions(
            "POST",
            "/v1/files",
            params={"task": str(TaskName(task)), "filename": self.filename},
            content=content,
            headers=headers,
            max_retries=None if self.retryable else 0,
            timeout=timeout,
        )

    def _media_type(self) -> str:
        return _MEDIA_TYPES.get(Path(self.filename.lower()).suffix, "application/jsonl")


def _record_chunks(rows: Iterable[Any], bar: tqdm[Any] | None) -> Iterator[bytes]:
    buf = io.BytesIO()
    for row in rows:
        buf.write(_row_line(row))
        if buf.tell() >= CHUNK_SIZE:
            chunk = buf.getvalue()
            if bar is not None:
                bar.update(len(chunk))
            yield chunk
            buf = io.BytesIO()
    if buf.tell():
        yield buf.getvalue()


def _read_chunks(f: IO[bytes], bar: tqdm[Any] | None) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_SIZE):
        if bar is not None:
            bar.update(len(chunk))
        yield chunk


class Files(SyncAPIResource):
    @cached_property
    def with_raw_response(self) -> FilesWithRawResponse:
        """The same methods, each returning an :class:`APIResponse` (status, headers, parse())."""
        return FilesWithRawResponse(self)

    def upload(
        self,
        file: FileInput,
        *,
        task: TaskName | str = TaskName.GENERIC,
        filename: str | None = None,
        progress: bool | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> FileObject:
        """Upload an input (``POST /v1/files``), streamed, never read whole: a path, bytes or a
        binary file of JSON lines, a JSON array, Parquet or any of them gzip-compressed; or
        records (an iterable of dicts, a pandas DataFrame, a ``datasets.Dataset``), sent as JSON
        lines as they are read.

        The server validates every record: a bad one raises ``UnprocessableEntityError`` whose
        ``details`` name its line (or record index). ``progress=None`` shows a bar for large
        files on a terminal."""
        upload = _Upload(file, filename)
        bar = upload.progress_bar(progress)
        try:
            data = upload.data
            content = (lambda: data) if data is not None else (lambda: upload.chunks(bar))
            return self._request(upload.options(task, content, timeout), FileObject)
        finally:
            if bar is not None:
                bar.close()

    def retrieve(self, file_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> FileObject:
        """``GET /v1/files/{file_id}``."""
        path = f"/v1/files/{check_id('file_id', file_id)}"
        return self._get(path, cast_to=FileObject, timeout=timeout)

    def delete(self, file_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> Deleted:
        """``DELETE /v1/files/{file_id}`` (409 while a running job reads it)."""
        path = f"/v1/files/{check_id('file_id', file_id)}"
        return self._delete(path, cast_to=Deleted, timeout=timeout)


class AsyncFiles(AsyncAPIResource):
    @cached_property
    def with_raw_response(self) -> AsyncFilesWithRawResponse:
        """The same methods, each returning an :class:`APIResponse` (status, headers, parse())."""
        return AsyncFilesWithRawResponse(self)

    async def upload(
        self,
        file: FileInput,
        *,
        task: TaskName | str = TaskName.GENERIC,
        filename: str | None = None,
        progress: bool | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> FileObject:
        """Upload an input (``POST /v1/files``), streamed, never read whole: a path, bytes or a
        binary file of JSON lines, a JSON array, Parquet or any of them gzip-compressed; or
        records (an iterable of dicts, a pandas DataFrame, a ``datasets.Dataset``), sent as JSON
        lines as they are read.

        The server validates every record: a bad one raises ``UnprocessableEntityError`` whose
        ``details`` name its line (or record index). ``progress=None`` shows a bar for large
        files on a terminal."""
        upload = _Upload(file, filename)
        bar = upload.progress_bar(progress)
        try:
            data = upload.data
            content = (lambda: data) if data is not None else (lambda: upload.achunks(bar))
            return await self._request(upload.options(task, content, timeout), FileObject)
        finally:
            if bar is not None:
                bar.close()

    async def retrieve(
        self, file_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> FileObject:
        """``GET /v1/files/{file_id}``."""
        path = f"/v1/files/{check_id('file_id', file_id)}"
        return await self._get(path, cast_to=FileObject, timeout=timeout)

    async def delete(
        self, file_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> Deleted:
        """``DELETE /v1/files/{file_id}`` (409 while a running job reads it)."""
        path = f"/v1/files/{check_id('file_id', file_id)}"
        return await self._delete(path, cast_to=Deleted, timeout=timeout)


class FilesWithRawResponse:
    """``client.files.with_raw_response``: each method returns an :class:`APIResponse`."""

    def __init__(self, files: Files) -> None:
        self.upload = to_raw_response_wrapper(files.upload)
        self.retrieve = to_raw_response_wrapper(files.retrieve)
        self.delete = to_raw_response_wrapper(files.delete)


class AsyncFilesWithRawResponse:
    """``client.files.with_raw_response``: each method returns an :class:`APIResponse`."""

    def __init__(self, files: AsyncFiles) -> None:
        self.upload = async_to_raw_response_wrapper(files.upload)
        self.retrieve = async_to_raw_response_wrapper(files.retrieve)
        self.delete = async_to_raw_response_wrapper(files.delete)
