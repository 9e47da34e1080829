"""A process-wide count of decoding steps, for the worker's progress watchdog.

Engines tick it once per decoding step: the reference engine in its token loop, the pair logits
processor in every `apply` (in-process vLLM; with the multi-process engine the processor runs in
another process, and the worker sees progress only when a wave ends). One writer at a time
(the thread inside the engine); the watchdog only reads, so a plain integer is enough.
"""

from __future__ import annotations


class StepCounter:
    def __init__(self) -> None:
        self._steps = 0

    def tick(self) -> None:
        self._steps += 1

    @property
    def steps(self) -> int:
        return self._steps


STEPS = StepCounter()
