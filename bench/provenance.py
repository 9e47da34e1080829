"""Where a benchmark result came from: the commit, whether the code differed from it, the command.

Kept free of heavy imports so that every benchmark script (engine and service side) records the
same fields; tests/test_bench_docs.py refuses quoted results measured on uncommitted code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()


def git_sha() -> dict[str, Any]:
    """HEAD, and whether the engine code (client/core/worker) or any code at all (everything
    tracked but the docs: scripts, service, tests) differed from it when the result was made."""
    engine = _git("status", "--porcelain", "--untracked-files=no", "--", "worker", "core", "client")
    code = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs", ":!README.md")
    return {
        "sha": _git("rev-parse", "HEAD"),
        "engine_code_dirty": bool(engine),
        "code_dirty": bool(code),
        "command": " ".join(["python", *sys.argv]),
    }
