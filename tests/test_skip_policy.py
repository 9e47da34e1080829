"""The skip policy (tests/skip_policy.py) on a throwaway suite run in a child pytest: with CI set,
a skipped test and a module skipped at collection fail the run; with the policy off they skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SUITE = {
    "test_skips.py": (
        "import pytest\n\n"
        "def test_passes():\n    pass\n\n"
        "def test_skips():\n    pytest.skip('the data is not here')\n\n"
        "@pytest.mark.xfail(reason='known', strict=True)\n"
        "def test_expected_failure():\n    raise AssertionError\n"
    ),
    "test_module_skip.py": (
        "import pytest\n\npytest.importorskip('contrail_no_such_module')\n\n"
        "def test_never_collected():\n    pass\n"
    ),
}


def _run(tmp_path: Path, files: tuple[str, ...], **env: str) -> tuple[int, str]:
    for name in files:
        (tmp_path / name).write_text(SUITE[name])
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "CONTRAIL_STRICT_SKIPS")}
    base["PYTHONPATH"] = str(REPO)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.skip_policy", "-p", "no:cacheprovider",
         *files],
        cwd=tmp_path,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    return run.returncode, run.stdout + run.stderr


def test_ci_turns_a_skipped_test_into_a_failure(tmp_path: Path) -> None:
    code, out = _run(tmp_path, ("test_skips.py",), CI="true")
    assert code == 1, out
    assert "skip policy: strict" in out
    assert "the data is not here" in out
    assert "1 failed, 1 passed, 1 xfailed" in out
    assert "skip policy: 1 skip(s) reported as failures: test_skips.py::test_skips" in out


def test_ci_turns_a_skipped_module_into_an_error(tmp_path: Path) -> None:
    # A module-level importorskip (the vLLM test modules) fails collection and so the run.
    code, out = _run(tmp_path, ("test_module_skip.py",), CONTRAIL_STRICT_SKIPS="1")
    assert code != 0, out
    assert "contrail_no_such_module" in out and "skips are failures here" in out


def test_policy_off_lets_tests_skip(tmp_path: Path) -> None:
    for env in ({}, {"CI": "true", "CONTRAIL_STRICT_SKIPS": "0"}):
        code, out = _run(tmp_path, tuple(SUITE), **env)
        assert code == 0, out
        assert "skip policy: lenient" in out
        assert "1 passed, 2 skipped, 1 xfailed" in out
