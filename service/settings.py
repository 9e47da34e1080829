"""Settings of the API server and the workers (environment variables prefixed ``CONTRAIL_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_storage_url() -> str:
    return (Path.cwd() / "contrail-data").resolve().as_uri()


class Settings(BaseSettings):
    """One settings object for the API and the workers; each reads the fields it needs."""

    model_config = SettingsConfigDict(env_prefix="CONTRAIL_", extra="ignore")

    # --- shared
    redis_url: str = "redis://127.0.0.1:6379/0"
    storage_url: str = Field(
        default_factory=_default_storage_url,
        description="file:///abs/dir (default ./contrail-data) or s3://bucket/prefix; S3 endpoint "
        "and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.",
    )
    shard_size: int = Field(default=64, ge=1, le=100_000, description="Items per queue shard.")

    # --- API: authentication, limits, quotas
    api_keys: str = Field(
        default="", description="Comma-separated 'tenant:key' pairs (hashed when loaded)."
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="File of 'tenant sha256:<hex>' or 'tenant:key' lines ('#' comments).",
    )
    max_upload_bytes: int = 1 << 30
    max_line_bytes: int = 1 << 20
    max_error_details: int = 100
    max_queued_items: int = Field(
        default=1_000_000, description="Per tenant: items in non-terminal jobs (and per file)."
    )
    max_concurrent_jobs: int = 32
    rate_limit_per_minute: int = Field(
        default=600, description="Per tenant: POST requests (uploads, job creations, cancels)."
    )
    idempotency_ttl_s: int = 24 * 3600
    url_expiry_s: int = 3600
    require_live_worker: bool = Field(
        default=True, description="Reject jobs for models no live worker serves (422)."
    )

    # --- worker
    model: str = "smollm2-135m"
    model_cache_dir: Path | None = Field(
        default=None, description="Prepared-model cache (default $CONTRAIL_CACHE_DIR/models)."
    )
    engine: Literal["vllm", "reference"] = "vllm"
    engine_options: dict[str, object] = Field(default_factory=dict)
    batch_shards: int = Field(
        default=8, ge=1, description="Shards read per wave (XREADGROUP COUNT)."
    )
    block_ms: int = 1000
    claim_idle_ms: int = Field(
        default=30_000, description="Reclaim shards idle this long (their worker stopped touching)."
    )
    max_deliveries: int = Field(default=3, ge=1, description="Deliveries before dead-lettering.")
    heartbeat_ttl_s: int = 15
    heartbeat_interval_s: float = 3.0
    shutdown_grace_s: float = 30.0


@lru_cache
def get_settings() -> Settings:
    return Settings()
