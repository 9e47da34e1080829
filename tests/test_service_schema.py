"""Property-based API testing with schemathesis against the live server's /openapi.json:
no generated request (valid or not) may produce a 5xx, and responses must match the schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contrail.testing.stack import KEY_A, Stack, announce_worker


@pytest.mark.slow
def test_schemathesis_no_server_errors(make_stack: object, tmp_path: Path) -> None:
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    # No rate limits: every request carries a tenant's key, also to /metrics (its own token),
    # which counts as a failed authentication.
    stack: Stack = make_stack(  # type: ignore[operator]
        CONTRAIL_RATE_LIMIT_PER_MINUTE="1000000", CONTRAIL_AUTH_FAILURES_PER_MINUTE="1000000"
    )
    announce_worker(stack, "tiny")
    proc = subprocess.run(
        [
            st,
            "run",
            f"{stack.url}/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--max-examples",
            "25",
            "--max-time",
            "60",
            "--seed",
            "1",
            "--header",
            f"Authorization: Bearer {KEY_A}",
            "--workers",
            "2",
            "--no-shrink",
            # Schemathesis 4.32's coverage phase crashes inside its own schema walker on Python
            # 3.11 ("AST constructor recursion depth mismatch" after a RecursionError) although
            # every case it sent passed; property-based fuzzing, examples and stateful still run.
            "--phases",
            "examples,fuzzing,stateful",
            "--request-timeout",
            "30",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
