"""The progress watchdog: a worker keeps its claim on its shards only while its engine advances.

`WatchedEngine` wraps the worker's engine: it knows whether a `generate` call is in progress and
when the engine last made progress (a decoding step, `engine.progress.STEPS`, or a finished
call). The heartbeat thread asks `stalled_for()` before each beat; past `engine_stall_s` the
worker gives its messages back (spending their delivery: a shard that hangs every engine ends up
decoded alone, item by item, like one that kills its worker), leaves the registry, says why and
exits with EXIT_ENGINE_STALLED. The main thread is inside the hung engine call, so the exit is
`os._exit` from the heartbeat thread. A hung engine (a CUDA hang, a deadlocked collective, a
wedged engine-core process) therefore holds work for `engine_stall_s`, not until the job's
completion window ends.

Time spent outside the engine (reading the queue, waiting on Redis or object storage) never
counts: those have their own retries and give-backs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from contrail.client.cli.base import EXIT_ENGINE_STALLED
from contrail.worker.engine.base import DecodeRequest, DecodeResult, Engine
from contrail.worker.engine.progress import STEPS

__all__ = ["EXIT_ENGINE_STALLED", "WatchedEngine"]


class WatchedEngine(Engine):
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = engine
        self.model_name = engine.model_name
        self.max_model_len = engine.max_model_len
        self.stats = engine.stats
        self.max_prompt_chars = engine.max_prompt_chars
        self._clock = clock
        self._lock = threading.Lock()
        self._busy = False
        self._seen = STEPS.steps
        self._progress_at = clock()

    def generate(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        self._mark(busy=True)
        try:
            return self.inner.generate(requests)
        finally:
            self._mark(busy=False)

    def close(self) -> None:
        self.inner.close()

    def _mark(self, *, busy: bool) -> None:
        with self._lock:
            self._busy = busy
            self._seen = STEPS.steps
            self._progress_at = self._clock()

    def stalled_for(self) -> float:
        """Seconds the engine has been inside a call without a decoding step (0 when idle)."""
        with self._lock:
            now = self._clock()
            if not self._busy:
                return 0.0
            steps = STEPS.steps
            if steps != self._seen:
                self._seen, self._progress_at = steps, now
            return now - self._progress_at
