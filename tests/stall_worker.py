"""A real worker process with one fault hook: with CONTRAIL_TEST_STALL=1 its first engine call
hangs forever without a decoding step, as a CUDA hang or a wedged engine-core process would
(tests/test_watchdog.py). Everything else is the product's worker, `contrail.worker.__main__`.

Run as ``python -m tests.stall_worker`` (the repository root on PYTHONPATH).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence

from contrail.worker.__main__ import main
from contrail.worker.engine.base import DecodeRequest, DecodeResult
from contrail.worker.engine.reference import ReferenceEngine

_generate = ReferenceEngine.generate
_hung = threading.Event()


def _generate_or_hang(
    self: ReferenceEngine, requests: Sequence[DecodeRequest]
) -> list[DecodeResult]:
    if os.environ.get("CONTRAIL_TEST_STALL") == "1" and not _hung.is_set():
        _hung.set()
        print("stall_worker: the engine hangs now", flush=True)
        threading.Event().wait()  # forever: only the watchdog ends this process
    return _generate(self, requests)


if __name__ == "__main__":  # patched only in the worker process, never in an importer's
    ReferenceEngine.generate = _generate_or_hang  # type: ignore[method-assign]
    sys.exit(main())
