"""LAS in a job's manifest when the job asks for it (`quality: {"las": true}`), on the real stack:
validated at creation, recorded on the job, computed once at finalization with its provenance,
and reused (byte for byte) by a repeated finalization."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from contrail.client.types import Manifest
from contrail.testing.stack import Stack, announce_worker, yes_no_items
from contrail.worker.consumer.finalize import Finalizer
from contrail.worker.consumer.job_quality import COMPUTED_ONCE, NOT_LOADED, LasReader, las_key
from contrail.worker.consumer.loop import Worker
from contrail.worker.engine.base import Engine
from contrail.worker.engine.factory import create_engine
from tests.service_fixtures import worker_settings

DECODING = {"max_new_tokens": 12, "counterfactual_fraction": 0.5}


def _create(stack: Stack, n: int, **extra: Any) -> str:
    body = {"items": yes_no_items(n), "task": "strategyqa", "model": "tiny", "decoding": DECODING}
    with stack.client() as c:
        r = c.post("/v1/jobs", json=body | extra)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_quality_setting_is_validated(stack: Stack) -> None:
    announce_worker(stack)
    body = {"items": yes_no_items(2), "task": "strategyqa", "model": "tiny"}
    with stack.client() as c:
        for quality in ({"las": "maybe"}, {"las": True, "bleu": True}, ["las"]):
            r = c.post("/v1/jobs", json=body | {"quality": quality})
            assert r.status_code == 422, r.text
            assert "quality" in r.text


def _decode_then_finalize(settings: Any, engine: Engine, worker_id: str) -> Worker:
    """A burst decode worker, then a burst finalizer with the same settings (its LAS reader);
    returns the finalizer."""
    Worker(settings, engine=engine, burst=True, worker_id=worker_id).run()
    finalizer = Worker(settings, burst=True, worker_id=f"{worker_id}-f", role="finalizer")
    finalizer.run()
    return finalizer


def test_manifest_las_opt_in(make_stack: Any, tiny_engine: Engine, tiny_model_path: Path) -> None:
    stack: Stack = make_stack(finalizer=False)  # finalized below, with the tiny LAS reader
    announce_worker(stack)
    with_las = _create(stack, 24, quality={"las": True})
    without = _create(stack, 24)
    settings = worker_settings(stack, las_simulator=str(tiny_model_path), las_simulator_layer=2)
    worker = _decode_then_finalize(settings, tiny_engine, f"t-{time.monotonic_ns()}")
    storage = stack.storage()
    with stack.client() as c:
        job = c.get(f"/v1/jobs/{with_las}").json()
    assert job["status"] == "completed" and job["quality"] == {"las": True}

    raw = storage.get(f"jobs/{with_las}/manifest.json")
    manifest = Manifest.model_validate_json(raw)
    assert manifest.quality_settings is not None and manifest.quality_settings.las
    assert manifest.quality is not None
    las = manifest.quality["las"]
    assert las is not None, manifest.quality.get("las_note")
    assert las["records"] == job["request_counts"]["completed"] == 36
    assert las["scored"] == 36 and las["skipped"] == 0
    info = las["simulator_info"]
    # The committed StrategyQA head reads SmolLM2 layer 16, not this reader: cross-fit instead.
    assert info["kind"] == "trained" and info["layer"] == 2 and info["folds"] == 5
    assert "cross-fitted" in info["training"] and "committed strategyqa head" in info["training"]
    assert info["train_items"] == 24 and info["feature_seconds"] > 0
    assert manifest.quality["las_note"] == COMPUTED_ONCE
    assert json.loads(storage.get(las_key(with_las)))["las"] == las

    # A repeated finalization reads the stored LAS back: a reader that cannot load any model
    # would otherwise leave a "not computed" note, and the manifest would change.
    record = worker.queue.job(with_las)
    assert record is not None and record.quality is not None
    again = Finalizer(
        worker.queue,
        storage,
        worker.guard,
        max_deliveries=1,
        retention_s=0,
        las_reader=LasReader(str(tiny_model_path / "missing"), 2, None),
    )
    again.merge(record)
    assert storage.get(f"jobs/{with_las}/manifest.json") == raw

    plain = Manifest.model_validate_json(storage.get(f"jobs/{without}/manifest.json"))
    assert plain.quality_settings is None and plain.quality is not None
    assert plain.quality["las"] is None and plain.quality["las_note"] is None
    assert storage.get_or_none(las_key(without)) is None


def _engine(tiny_model_path: Path) -> Engine:
    """An engine per burst worker: a worker closes its engine when it stops."""
    return create_engine("reference", "tiny", cache_dir=tiny_model_path.parent)


def test_las_not_computed_leaves_a_note_and_the_job_completes(
    make_stack: Any, tiny_model_path: Path
) -> None:
    stack: Stack = make_stack(finalizer=False)  # finalized below, with each LAS reader
    announce_worker(stack)
    few = _create(stack, 6, quality={"las": True})  # too few items to cross-fit a head
    settings = worker_settings(stack, las_simulator=str(tiny_model_path), las_simulator_layer=2)
    _decode_then_finalize(settings, _engine(tiny_model_path), "t-few")
    broken = _create(stack, 24, quality={"las": True})  # a reader that cannot load its model
    missing = tiny_model_path.parent / "no-such-simulator"
    settings = worker_settings(stack, las_simulator=str(missing), las_simulator_layer=2)
    _decode_then_finalize(settings, _engine(tiny_model_path), "t-broken")

    storage = stack.storage()
    notes = {}
    for job_id in (few, broken):
        with stack.client() as c:
            assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "completed"
        manifest = Manifest.model_validate_json(storage.get(f"jobs/{job_id}/manifest.json"))
        assert manifest.quality is not None and manifest.quality["las"] is None
        notes[job_id] = manifest.quality["las_note"]
    assert "at least 20 scorable items" in notes[few]
    # The tenant reads a fixed message: no exception text, no server path.
    assert notes[broken] == NOT_LOADED
    assert str(missing) not in notes[broken]
