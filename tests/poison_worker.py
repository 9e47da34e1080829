"""A real worker process with one fault hook: it dies by SIGKILL, as under the kernel's OOM
killer, when an engine call receives a prompt containing POISON (tests/test_hostile_jobs.py).

Run as ``python -m tests.poison_worker`` (the repository root on PYTHONPATH); everything else is
the product's worker, `contrail.worker.__main__`.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Final

from contrail.worker.__main__ import main
from contrail.worker.engine.base import DecodeRequest, DecodeResult
from contrail.worker.engine.reference import ReferenceEngine

POISON: Final = "POISON-PILL"
_generate = ReferenceEngine.generate


def _generate_or_die(
    self: ReferenceEngine, requests: Sequence[DecodeRequest]
) -> list[DecodeResult]:
    if any(POISON in r.pos_prompt.rsplit("\n\n", 1)[-1] for r in requests):
        os.kill(os.getpid(), signal.SIGKILL)
    return _generate(self, requests)


if __name__ == "__main__":  # patched only in the worker process, never in an importer's
    ReferenceEngine.generate = _generate_or_die  # type: ignore[method-assign]
    sys.exit(main())
