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

    # Lifecycle (docs/OPERATIONS.md): the reconciler runs in the API and in every worker.
    job_retention_s: int = Field(
        default=30 * 86400,
        ge=0,
        description="Keep a finished job's Redis records this long (0 = forever); its dataset "
        "stays in storage until the job is deleted.",
    )
    reconcile_interval_s: float = Field(
        default=10.0, gt=0, description="Seconds between reconciler passes."
    )
    reconcile_stall_s: float = Field(
        default=120.0,
        gt=0,
        description="A job without progress this long has its queue messages checked.",
    )
