"""The ``files`` resource: upload a JSONL input file (streamed), look one up."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from contrail.client._base import AsyncAPI, RequestOptions, SyncAPI, check_id
from contrail.client.types import Deleted, FileObject, TaskName

__all__ = ["AsyncFiles", "FileInput", "Files"]

FileInput = str | os.PathLike[str] | bytes | IO[bytes]
"""A path, the file's bytes, or a binary file object (read from its current position)."""

CHUNK_SIZE = 1 << 20
# Uploads at least this large show a progress bar when ``progress`` is left as ``None`` and
# standard error is a terminal.
PROGRESS_THRESHOLD = 8 << 20


class _Upload:
    """A re-readable upload source: every attempt streams it again from its first byte."""

    def __init__(self, file: FileInput, filename: str | None) -> None:
        self.data: bytes | None = None
        self.path: Path | None = None
        self.fileobj: IO[bytes] | None = None
        self.start = 0
        if isinstance(file, bytes):
            self.data = file
            self.size = len(file)
            self.filename = filename or "upload.jsonl"
        elif isinstance(file, str | os.PathLike):
            self.path = Path(file)
            if not self.path.is_file():
                raise FileNotFoundError(f"No such file: {self.path}")
            self.size = self.path.stat().st_size
            self.filename = filename or self.path.name
        else:
            self.fileobj = file
            self.start = file.tell()
            self.size = file.seek(0, os.SEEK_END) - self.start
            file.seek(self.start)
            name = getattr(file, "name", None)
            self.filename = filename or (
                Path(name).name if isinstance(name, str) else "upload.jsonl"
            )

    def progress_bar(self, progress: bool | None) -> tqdm[Any] | None:
        if progress is None:
            progress = self.size >= PROGRESS_THRESHOLD and sys.stderr.isatty()
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
            self.fileobj.seek(self.start)
            yield from _read_chunks(self.fileobj, bar)

    async def achunks(self, bar: tqdm[Any] | None) -> AsyncIterator[bytes]:
        # Local-disk reads of 1 MiB are short; reading them in the event loop keeps this simple.
        for chunk in self.chunks(bar):
            yield chunk

    def options(self, task: TaskName | str, content: Callable[[], Any]) -> RequestOptions:
        return RequestOptions(
            "POST",
            "/v1/files",
            params={"task": str(TaskName(task)), "filename": self.filename},
            content=content,
            headers={"Content-Type": "application/jsonl", "Content-Length": str(self.size)},
        )


def _read_chunks(f: IO[bytes], bar: tqdm[Any] | None) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_SIZE):
        if bar is not None:
            bar.update(len(chunk))
        yield chunk


class Files:
    def __init__(self, client: SyncAPI) -> None:
        self._client = client

    def upload(
        self,
        file: FileInput,
        *,
        task: TaskName | str = TaskName.GENERIC,
        filename: str | None = None,
        progress: bool | None = None,
    ) -> FileObject:
        """Upload a JSONL input file (``POST /v1/files``); the file is streamed, never read whole.

        The server validates every line: a bad line raises ``UnprocessableEntityError`` whose
        ``details`` name the line. ``progress=None`` shows a bar for large files on a terminal."""
        upload = _Upload(file, filename)
        bar = upload.progress_bar(progress)
        try:
            data = upload.data
            content = (lambda: data) if data is not None else (lambda: upload.chunks(bar))
            response = self._client.request(upload.options(task, content))
        finally:
            if bar is not None:
                bar.close()
        return FileObject.model_validate_json(response.content)

    def retrieve(self, file_id: str) -> FileObject:
        """``GET /v1/files/{file_id}``."""
        check_id("file_id", file_id)
        response = self._client.request(RequestOptions("GET", f"/v1/files/{file_id}"))
        return FileObject.model_validate_json(response.content)

    def delete(self, file_id: str) -> Deleted:
        """``DELETE /v1/files/{file_id}`` (409 while a running job reads it)."""
        check_id("file_id", file_id)
        response = self._client.request(RequestOptions("DELETE", f"/v1/files/{file_id}"))
        return Deleted.model_validate_json(response.content)


class AsyncFiles:
    def __init__(self, client: AsyncAPI) -> None:
        self._client = client

    async def upload(
        self,
        file: FileInput,
        *,
        task: TaskName | str = TaskName.GENERIC,
        filename: str | None = None,
        progress: bool | None = None,
    ) -> FileObject:
        """Upload a JSONL input file (``POST /v1/files``); the file is streamed, never read whole.

        The server validates every line: a bad line raises ``UnprocessableEntityError`` whose
        ``details`` name the line. ``progress=None`` shows a bar for large files on a terminal."""
        upload = _Upload(file, filename)
        bar = upload.progress_bar(progress)
        try:
            data = upload.data
            content = (lambda: data) if data is not None else (lambda: upload.achunks(bar))
            response = await self._client.request(upload.options(task, content))
        finally:
            if bar is not None:
                bar.close()
        return FileObject.model_validate_json(response.content)

    async def retrieve(self, file_id: str) -> FileObject:
        """``GET /v1/files/{file_id}``."""
        check_id("file_id", file_id)
        response = await self._client.request(RequestOptions("GET", f"/v1/files/{file_id}"))
        return FileObject.model_validate_json(response.content)

    async def delete(self, file_id: str) -> Deleted:
        """``DELETE /v1/files/{file_id}`` (409 while a running job reads it)."""
        check_id("file_id", file_id)
        response = await self._client.request(RequestOptions("DELETE", f"/v1/files/{file_id}"))
        return Deleted.model_validate_json(response.content)
