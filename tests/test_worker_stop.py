"""A worker that stops hard (its grace period is over, a second signal, or the watchdog) closes its
engine first, so that vLLM's engine-core process and device memory go with it, but never waits on
an engine that does not close."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from contrail.testing.stack import Stack
from contrail.worker.consumer import loop
from contrail.worker.consumer.loop import Worker
from contrail.worker.engine.base import DecodeRequest, DecodeResult, Engine, EngineStats
from tests.service_fixtures import worker_settings


class _Closable(Engine):
    def __init__(self, hang: bool = False) -> None:
        self.model_name, self.max_model_len, self.stats = "fake", 64, EngineStats()
        self.hang = hang
        self.closed = threading.Event()
        self.release = threading.Event()

    def generate(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        return []

    def close(self) -> None:
        if self.hang:
            self.release.wait()  # a wedged engine: close never returns on its own
        self.closed.set()


class _Exited(Exception):
    pass


def _exit_recorder(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise _Exited

    monkeypatch.setattr(loop.os, "_exit", fake_exit)
    return codes


def _worker(stack: Stack, engine: Engine) -> Worker:
    return Worker(worker_settings(stack), engine=engine, worker_id=f"stop-{time.monotonic_ns()}")


def test_a_hard_stop_closes_the_engine_before_it_exits(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = _exit_recorder(monkeypatch)
    engine = _Closable()
    with pytest.raises(_Exited):
        _worker(stack, engine)._stop_now()
    assert engine.closed.is_set()
    assert codes == [0]


def test_an_engine_that_does_not_close_does_not_hold_the_exit(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    codes = _exit_recorder(monkeypatch)
    monkeypatch.setattr(loop, "ENGINE_CLOSE_S", 0.2)
    engine = _Closable(hang=True)
    with pytest.raises(_Exited):
        _worker(stack, engine)._stop_now()
    # it exited while close was still blocked
    assert codes == [0]
    assert not engine.closed.is_set()
    assert "did not close within" in caplog.text
    engine.release.set()  # let the closer thread end
