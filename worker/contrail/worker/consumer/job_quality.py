"""LAS for a job's manifest, when the job asked for it (`JobCreate.quality.las`).

The finalizer calls `job_las` with the job's records. The simulator is the trained one that
`contrail eval` uses by default: the committed head of the job's task when there is one for this
reader (StrategyQA, CREAK), else cross-fitted on the job's own records (5 folds by item).

Computed once: the result, with its provenance and timings, is stored next to the dataset
(`jobs/<id>/quality/las.json`) before the manifest is written, and a repeated finalization (a
worker died before the terminal transition) reads it back instead of running the model again. So
the manifest stays byte-identical, and its timings are those of the first computation. A dataset
LAS cannot be computed for (too few items to cross-fit, free-form answers, a committed head that
belongs to another reader) gets `las: null` and a note saying why; the job still completes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from pydantic import BaseModel

from contrail.client.types import RationaleRecord
from contrail.core.storage import Storage
from contrail.distill.las import LasResult, evaluate_las
from contrail.distill.options import DEFAULT_BOOTSTRAP
from contrail.distill.simulators import HiddenStateEncoder, TrainedSimulator

log = logging.getLogger("contrail.worker")

COMPUTED_ONCE: Final = (
    "computed once, at the job's first finalization, and reused by any repeated finalization "
    "(timings included)"
)

NOT_LOADED: Final = "not computed: the worker could not load its LAS simulator"
FAILED: Final = "not computed: the LAS simulator failed"


class JobLas(BaseModel):
    """What the manifest gets: LAS (or None) and how it was computed, or why it was not."""

    las: LasResult | None
    note: str


def las_key(job_id: str) -> str:
    return f"jobs/{job_id}/quality/las.json"


class LasReader:
    """The worker's simulator reader, loaded on the first job that asks for LAS and kept: the
    model loads once per worker, its per-prompt cache is emptied after every job."""

    def __init__(self, model: str, layer: int, cache_dir: Path | None) -> None:
        self.model, self.layer, self.cache_dir = model, layer, cache_dir
        self._encoder: HiddenStateEncoder | None = None

    def simulator(self) -> TrainedSimulator:
        if self._encoder is None:
            self._encoder = HiddenStateEncoder(
                self.model, layer=self.layer, cache_dir=self.cache_dir
            )
        self._encoder.forget()
        return TrainedSimulator(encoder=self._encoder, seed=0)


def job_las(
    storage: Storage, job_id: str, records: Sequence[RationaleRecord], reader: LasReader
) -> JobLas:
    """The job's LAS: read back when an earlier finalization stored it, else computed now and
    stored (see the module docstring)."""
    key = las_key(job_id)
    stored = storage.get_or_none(key)
    if stored is not None:
        return JobLas.model_validate_json(stored)
    try:
        simulator = reader.simulator()
    except Exception:
        # A deployment problem, not the tenant's: the details (paths) stay in the worker log.
        log.exception("LAS simulator of job %s could not be loaded", job_id)
        outcome = JobLas(las=None, note=NOT_LOADED)
        storage.put(key, outcome.model_dump_json(indent=2).encode())
        return outcome
    try:
        result, _ = evaluate_las(records, simulator, reps=DEFAULT_BOOTSTRAP, seed=0)
        outcome = JobLas(las=result, note=COMPUTED_ONCE)
    except ValueError as exc:  # ours, written for the user: too few items, free-form answers
        log.warning("LAS for job %s not computed: %s", job_id, exc)
        outcome = JobLas(las=None, note=f"not computed: {exc}")
    except Exception:  # the dataset is what the job is for: LAS never fails it
        # Engine text and paths stay in the worker log; the tenant gets a fixed message.
        log.exception("LAS for job %s failed", job_id)
        outcome = JobLas(las=None, note=FAILED)
    storage.put(key, outcome.model_dump_json(indent=2).encode())
    return outcome


__all__ = ["COMPUTED_ONCE", "FAILED", "NOT_LOADED", "JobLas", "LasReader", "job_las", "las_key"]
