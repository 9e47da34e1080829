"""Settings of a worker (environment variables prefixed ``CONTRAIL_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field

from contrail.client.jobs import DEFAULT_MODEL
from contrail.core.settings import CommonSettings
from contrail.distill.options import DEFAULT_LAYER, DEFAULT_SIMULATOR


class WorkerSettings(CommonSettings):
    """The teacher a worker serves, its engine, and how it reads the queue."""

    model: str = Field(
        default=DEFAULT_MODEL,
        description="The teacher: smollm2-135m, tiny, a Hugging Face Hub id (org/name, "
        "optionally @revision) or a local model folder.",
    )
    model_cache_dir: Path | None = Field(
        default=None, description="Prepared-model cache (default $CONTRAIL_CACHE_DIR/models)."
    )
    engine: Literal["vllm", "reference", "simulated"] = Field(
        default="vllm",
        description="vllm (production), reference (plain torch), or simulated (no model: "
        "sleeps as long as a GPU profile says; for fleet-scale benchmarks).",
    )
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
    shutdown_grace_s: float = Field(
        default=30.0,
        description="After SIGTERM, seconds to finish the wave in hand before giving its "
        "shards back to the queue (without spending a delivery) and exiting.",
    )
    engine_stall_s: float = Field(
        default=300.0,
        gt=0,
        description="A worker whose engine is inside a call without a decoding step for this "
        "long gives its shards back (a delivery spent), exits with status 75 and says why "
        "(contrail.worker.consumer.watchdog).",
    )
    storage_retry_s: float = Field(
        default=600.0,
        ge=0,
        description="Retry failing object-storage calls this long (with backoff) before "
        "giving the shards in hand back to the queue.",
    )
    las_simulator: str = Field(
        default=DEFAULT_SIMULATOR,
        description="Language model of the LAS simulator, for jobs that ask for LAS "
        "(quality.las): a model name or folder.",
    )
    las_simulator_layer: int = Field(
        default=DEFAULT_LAYER, ge=1, description="Hidden layer the LAS simulator reads."
    )
    allow_untested_vllm: bool = Field(
        default=False,
        description="Start even when the installed vLLM is not the release line the pair "
        "processor is tested with (docs/DECODING.md); at your own risk.",
    )
    scratch_dir: Path | None = Field(
        default=None,
        description="Local folder for building a job's dataset files at finalization (about "
        "the dataset's size; default: the system temporary folder).",
    )

    @property
    def model_id(self) -> str:
        """The id this worker announces and reads the queue of (jobs name it): a local folder's
        name, else the model as configured (a local name or a Hub id with its revision)."""
        name = self.model.strip()
        path = Path(name).expanduser()
        if "@" not in name and path.is_dir():
            return path.resolve().name
        return name


@lru_cache
def get_settings() -> WorkerSettings:
    return WorkerSettings()
