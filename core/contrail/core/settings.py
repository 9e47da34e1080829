"""Settings every contrail process reads (environment variables prefixed ``CONTRAIL_``).

The API (`contrail.service.settings.ApiSettings`) and the workers
(`contrail.worker.settings.WorkerSettings`) extend this class with their own fields; both read the
same environment, so one deployment-wide configuration serves every process.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_storage_url() -> str:
    return (Path.cwd() / "contrail-data").resolve().as_uri()


class CommonSettings(BaseSettings):
    """Where the queue and the data live, and how big a shard is."""

    model_config = SettingsConfigDict(env_prefix="CONTRAIL_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    storage_url: str = Field(
        default_factory=_default_storage_url,
        description="file:///abs/dir (default ./contrail-data) or s3://bucket/prefix; S3 endpoint "
        "and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.",
    )
    shard_size: int = Field(default=64, ge=1, le=100_000, description="Items per queue shard.")
