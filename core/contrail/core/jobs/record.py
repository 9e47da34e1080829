"""The job and file records as typed models, and their Redis hash form.

A record is written whole once (at creation, inside the creation script) and afterwards changed
only by the Lua scripts of `contrail.core.jobs.lua`, which touch named fields (counters,
status and its timestamps). `to_hash` / `from_hash` are the only code that knows how a field is
spelled in Redis.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from contrail.client.types import (
    Compression,
    Container,
    DecodingSettings,
    Demonstration,
    FileObject,
    Job,
    JobStatus,
    QualitySettings,
    RequestCounts,
    TaskName,
    Usage,
)


def new_id(prefix: str) -> str:
    """Time-sortable id: millisecond timestamp then 64 random bits."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def text(v: Any) -> str:
    """A Redis reply value as text."""
    return v.decode() if isinstance(v, bytes) else str(v)


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


class _HashRecord(BaseModel):
    """A model stored as a flat Redis hash: scalars as text, `_json` fields as JSON, None absent."""

    model_config = ConfigDict(extra="ignore")
    _json: ClassVar[frozenset[str]] = frozenset()

    def to_hash(self) -> dict[str, str]:
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {name: self._text(name, value) for name, value in data.items()}

    def _text(self, name: str, value: Any) -> str:
        if name in self._json:
            return json.dumps(value, sort_keys=True, separators=(",", ":"))
        if isinstance(value, bool):  # the scripts test flags against '1'
            return "1" if value else "0"
        return str(value)

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> Any:
        h = decode_hash(raw)
        data: dict[str, Any] = {}
        for name in cls.model_fields:
            value = h.get(name)
            if value is None or value == "":
                continue
            data[name] = json.loads(value) if name in cls._json else value
        return cls.model_validate(data)


def _ts(v: float | None) -> int | None:
    return None if v is None else int(v)


class JobRecord(_HashRecord):
    """Everything Redis knows about a job (`contrail:job:<id>`)."""

    _json: ClassVar[frozenset[str]] = frozenset(
        {"decoding", "demonstrations", "metadata", "template", "quality"}
    )

    id: str
    tenant: str
    status: JobStatus
    task: TaskName
    model: str
    decoding: DecodingSettings
    demonstrations: list[Demonstration] | None = None
    template: str | None = None  # the job's prompt block template (validated at creation)
    metadata: dict[str, str] | None = None
    quality: QualitySettings | None = None  # measurements asked for at finalization
    input_file_id: str | None = None
    input_prefix: str  # shard i reads "<input_prefix><i:06d>.jsonl" from storage
    items: int
    total: int  # rationales requested (factual + counterfactual): exact from creation
    shards: int
    completion_window: str = "24h"
    created_at: float
    expires_at: float
    updated_at: float | None = None
    # counters, changed only by the shard-counting script (one counted attempt per shard)
    completed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_seconds: float = 0.0
    shards_done: int = 0
    # lifecycle: the status that finalization ends in, fixed when the job is frozen
    finalize_as: JobStatus | None = None
    frozen_at: float | None = None
    error: str | None = None
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> JobRecord:
        record: JobRecord = super().from_hash(raw)
        return record

    def input_key(self, shard: int) -> str:
        return f"{self.input_prefix}{shard:06d}.jsonl"

    def to_job(self) -> Job:
        return Job(
            id=self.id,
            status=self.status,
            task=self.task,
            model=self.model,
            decoding=self.decoding,
            template=self.template,
            input_file_id=self.input_file_id,
            request_counts=RequestCounts(
                total=self.total, completed=self.completed, failed=self.failed
            ),
            usage=Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens),
            metadata=self.metadata,
            quality=self.quality,
            error=self.error,
            completion_window=self.completion_window,
            created_at=int(self.created_at),
            expires_at=_ts(self.expires_at),
            in_progress_at=_ts(self.in_progress_at),
            finalizing_at=_ts(self.finalizing_at),
            completed_at=_ts(self.completed_at),
            failed_at=_ts(self.failed_at),
            expired_at=_ts(self.expired_at),
            cancelling_at=_ts(self.cancelling_at),
            cancelled_at=_ts(self.cancelled_at),
        )


IDS_PER_OBJECT = 65_536


class FileRecord(_HashRecord):
    """An uploaded, validated input file (`contrail:file:<id>`)."""

    id: str
    tenant: str
    filename: str | None = None
    bytes: int
    items: int
    task: TaskName
    format: str
    container: Container = "jsonl"
    compression: Compression | None = None
    created_at: float
    parts: int
    part_size: int

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> FileRecord:
        record: FileRecord = super().from_hash(raw)
        return record

    @property
    def part_prefix(self) -> str:
        return f"files/{self.id}/part-"

    deleting: bool = False

    @property
    def ids_prefix(self) -> str:
        """The file's item ids in input order, one per line, in numbered objects of IDS_PER_OBJECT
        ids (exact job totals at creation without reading the items)."""
        return f"files/{self.id}/ids/"

    def ids_key(self, n: int) -> str:
        return f"{self.ids_prefix}{n:06d}.txt"

    def part_counts(self) -> list[int]:
        counts = [self.part_size] * self.parts
        if counts:
            counts[-1] = self.items - self.part_size * (self.parts - 1)
        return counts

    def to_file(self) -> FileObject:
        return FileObject(
            id=self.id,
            filename=self.filename,
            bytes=self.bytes,
            lines=self.items,
            task=self.task,
            format=self.format,
            container=self.container,
            compression=self.compression,
            created_at=int(self.created_at),
        )
