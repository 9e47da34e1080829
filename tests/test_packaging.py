"""The wheel holds every module under its namespaced name, and its base install is the SDK alone.

The folders are mapped with setuptools package-dir, and a subpackage missing from pyproject's
`packages` list still imports in an editable install but silently vanishes from the wheel: this
test builds the real wheel and compares it with the source tree.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"client": "contrail/client", "service": "contrail/service", "worker": "contrail/worker"}


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
        f"{target}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, target in PARTS.items()
        for path in (ROOT / folder).rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and (path.suffix in (".py", ".jsonl") or path.name == "py.typed")
    }
    missing = sorted(expected - names)
    assert not missing, f"missing from the wheel (add the subpackage to pyproject): {missing}"
    assert not any(n.startswith(("service/", "worker/", "client/")) for n in names)


def test_base_install_is_the_sdk_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode())
    base = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in base}
    assert names == {"httpx", "pydantic", "tqdm"}, base
