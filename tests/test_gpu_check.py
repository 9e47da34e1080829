"""scripts/gpu_check.py's CPU-safe parts, run as an operator runs it, on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.py"


def _run(tmp_path: Path, *args: str) -> tuple[int, dict, str]:
    out = tmp_path / "check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "tiny", "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, json.loads(out.read_text()), done.stdout


def test_the_cpu_safe_checks_pass_and_the_gpu_one_says_why_it_skipped(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    rc, result, stdout = _run(tmp_path, "--pairs", "6", "--max-new-tokens", "24")
    checks = {c["name"]: c for c in result["checks"]}
    assert rc == 0, stdout
    assert {n: c["status"] for n, c in checks.items()} == {
        "startup": "pass",
        "refuses_v2": "pass",
        "equal_fp32": "pass",
        "desync": "pass",
        "bf16_reorder": "skipped",
        "step_time": "pass",
    }, stdout
    assert "CUDA" in checks["bf16_reorder"]["detail"]["reason"]
    startup = checks["startup"]["detail"]
    assert startup["self_check"] == "passed" and startup["use_v2_model_runner"] is False
    assert "forces Model Runner V2" in checks["refuses_v2"]["detail"]["refused"]
    assert checks["equal_fp32"]["detail"]["tokens_agreed"] >= 6 * 8
    assert checks["desync"]["detail"]["pairs_continued"] > 0
    step = checks["step_time"]["detail"]
    assert step["pairs_128"]["steps"] > 0 and step["greedy_256"]["steps"] > 0
    assert {"sha", "code_dirty", "command"} <= set(result["provenance"])


def test_runner_v2_on_a_build_without_triton_fails_the_startup_with_the_reason(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    rc, result, stdout = _run(tmp_path, "--runner", "v2")
    checks = {c["name"]: c for c in result["checks"]}
    assert rc == 1
    assert checks["startup"]["status"] == "fail"
    assert "has no Triton" in checks["startup"]["detail"]["error"]
    assert checks["refuses_v2"]["status"] == "pass"
    for name in ("equal_fp32", "desync", "step_time"):
        assert checks[name]["status"] == "skipped", stdout
