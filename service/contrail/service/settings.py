"""Settings of the API server (environment variables prefixed ``CONTRAIL_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from contrail.core.settings import CommonSettings
from contrail.service.auth import MIN_KEY_LENGTH


class ApiSettings(CommonSettings):
    """The API server's settings: authentication, limits and quotas."""

    api_keys: str = Field(
        default="", description="Comma-separated 'tenant:key' pairs (hashed when loaded)."
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="File of 'tenant sha256:<hex>' or 'tenant:key' lines ('#' comments); "
        "re-read when it changes (keys are rotated and revoked without a restart).",
    )
    auth_failures_per_minute: int = Field(
        default=20,
        ge=1,
        description="Per client address: failed authentications (wrong API key or metrics "
        "token) in a minute before every request from it answers 429 until the minute ends.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of GET /metrics (at least 16 characters); unset: /metrics "
        "answers 404. API keys are not accepted there.",
    )
    storage_public_url: str | None = Field(
        default=None,
        description="S3 endpoint the dataset's presigned links point at (e.g. "
        "https://s3.example.com), when clients reach the store by another address than the API "
        "does (AWS_ENDPOINT_URL).",
    )
    max_upload_bytes: int = Field(
        default=1 << 30, ge=1, description="POST /v1/files: request body limit (413 above)."
    )
    max_request_bytes: int = Field(
        default=4 << 20,
        ge=1024,
        description="Every other route's request body limit (413 above), enforced while the "
        "body is read, before it is parsed or the caller authenticated.",
    )
    max_decompressed_bytes: int = Field(
        default=4 << 30, ge=1, description="A gzip upload's decompressed size limit (413 above)."
    )
    max_line_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="One JSON line or JSON-array record of an upload (422 naming it above).",
    )
    upload_scratch_dir: Path | None = Field(
        default=None,
        description="Local folder for an upload's temporary files (its id index; a Parquet "
        "upload's spooled copy); default: the system temporary folder.",
    )
    max_error_details: int = Field(
        default=100, ge=1, description="Invalid records listed in an upload's 422."
    )
    max_upload_errors: int = Field(
        default=1000,
        ge=1,
        description="An upload's validation stops at this many invalid records: 422 once "
        "the rest of the body is drained, unread (a file of a million bad records costs no more "
        "than this many).",
    )
    max_concurrent_uploads: int = Field(
        default=2,
        ge=1,
        description="Per tenant and API process: uploads being validated at once (429 with "
        "Retry-After above).",
    )
    max_queued_items: int = Field(
        default=1_000_000, description="Per tenant: items in non-terminal jobs (and per file)."
    )
    max_concurrent_jobs: int = 32
    rate_limit_per_minute: int = Field(
        default=600, description="Per tenant: POST requests (uploads, job creations, cancels)."
    )
    rate_window_s: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="Length of the rate-limit and failed-authentication windows (the *_PER_MINUTE "
        "limits count per window; tests shorten it rather than wait for the minute boundary).",
    )
    idempotency_ttl_s: int = 24 * 3600
    url_expiry_s: int = 3600
    storage_timeout_s: int = Field(
        default=15,
        ge=1,
        description="Give up on an object-storage request after this long (the API answers 503).",
    )
    viewer_cache_mb: int = Field(
        default=256,
        ge=0,
        description="Memory for the viewer's cache of parsed shards and Parquet columns.",
    )
    redis_max_connections: int = Field(
        default=100,
        ge=1,
        description="Redis connections per API process; a request waits (up to 10 s) for a "
        "free one instead of failing.",
    )
    require_live_worker: bool = Field(
        default=True,
        description="Reject jobs for models that no live worker serves and that are not "
        "declared (422).",
    )
    declared_models: str = Field(
        default="",
        description="Comma-separated model ids this deployment serves even while no worker is "
        "live (workers scaled from zero): their jobs are accepted and wait in the queue.",
    )

    @property
    def declared(self) -> frozenset[str]:
        return frozenset(m.strip() for m in self.declared_models.split(",") if m.strip())

    @field_validator("metrics_token")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value():
            return None  # an empty variable (compose's default) means unset
        if v is not None and len(v.get_secret_value()) < MIN_KEY_LENGTH:
            raise ValueError(f"must have at least {MIN_KEY_LENGTH} characters")
        return v


@lru_cache
def get_settings() -> ApiSettings:
    return ApiSettings()
