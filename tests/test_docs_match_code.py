"""The docs name only what exists: every repository path README.md and docs/** mention is in the
repository (a `file::test_name` reference names a test that file defines), and every
`CONTRAIL_*` setting the code reads is in the README's configuration table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
# Created at run time (by `contrail up`, the demo, local storage), never committed.
RUNTIME = (".contrail/", "./contrail-data", "contrail-data/", "runs/")
CODE = re.compile(r"`([^`\s]+)`")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
ENV_READ = re.compile(r"""(?:environ(?:\.get)?\(|environ\[|getenv\()\s*["'](CONTRAIL_[A-Z0-9_]+)""")
# A setting read through a named constant (`ENV_API_KEY: Final = "CONTRAIL_API_KEY"`).
ENV_CONSTANT = re.compile(
    r"""^[A-Z][A-Z0-9_]*(?::\s*Final)?\s*=\s*["'](CONTRAIL_[A-Z0-9_]+)["']""", re.M
)


def _top_level() -> set[str]:
    return {p.name for p in REPO.iterdir()}


def named_paths(doc: Path) -> list[tuple[str, Path, str | None]]:
    """(as written, the path it names, a test name after `::`) for the repository paths in
    `doc`: link targets (relative to the doc) and inline code starting with a top-level entry."""
    text = doc.read_text(encoding="utf-8")
    top = _top_level()
    found: list[tuple[str, Path, str | None]] = []
    for m in LINK.finditer(text):
        target = m.group(1)
        if "://" not in target and not target.startswith("mailto:"):
            found.append((target, (doc.parent / target).resolve(), None))
    for m in CODE.finditer(text):
        written = m.group(1).rstrip(".,:;")
        path, _, test = written.partition("::")
        if "/" not in path or path.split("/")[0] not in top or re.search(r"[{}<>|=()\[\]$]", path):
            continue
        if "*" in path:  # a glob (`worker/contrail/worker/engine/*.py`) must match something
            matched = sorted(REPO.glob(path))
            found.append((written, matched[0] if matched else REPO / path, None))
            continue
        found.append((written, REPO / path, test or None))
    return found


def defines(path: Path, name: str) -> bool:
    return bool(re.search(rf"^\s*(?:async )?def {re.escape(name)}\(", path.read_text(), re.M))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_named_path_exists(doc: Path) -> None:
    missing = []
    for written, path, test in named_paths(doc):
        if written.startswith(RUNTIME):
            continue
        if not path.exists():
            missing.append(written)
        elif test and not defines(path, test):
            missing.append(f"{written} (no such test)")
    assert missing == []


def code_settings() -> set[str]:
    """Every CONTRAIL_* variable a process reads: pydantic-settings fields and direct reads."""
    from contrail.core.settings import CommonSettings
    from contrail.service.settings import ApiSettings
    from contrail.worker.settings import WorkerSettings

    names: set[str] = set()
    for cls in (CommonSettings, ApiSettings, WorkerSettings):
        prefix = str(cls.model_config.get("env_prefix", ""))
        names |= {(prefix + f).upper() for f in cls.model_fields}
    for root in ("client", "core", "service", "worker", "distill"):
        for f in (REPO / root).rglob("*.py"):
            text = f.read_text(encoding="utf-8")
            names |= set(ENV_READ.findall(text)) | set(ENV_CONSTANT.findall(text))
    return names


def readme_table() -> set[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Configuration\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert section, "README.md has no '## Configuration' section"
    rows = [ln for ln in section.group(1).splitlines() if ln.startswith("| `")]
    first_cells = [ln.split("|")[1] for ln in rows]
    return {name for cell in first_cells for name in re.findall(r"`(CONTRAIL_[A-Z0-9_]+)`", cell)}


def test_every_setting_is_in_the_readme_table() -> None:
    assert sorted(code_settings() - readme_table()) == []


def test_the_checks_fail_on_what_does_not_exist(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "See `worker/engine/vllm_pair.py`, `worker/engine/*.py`, `tests/test_cli.py::test_help`,"
        " `tests/test_cli.py::test_nothing` and [x](missing.md).\n"
    )
    named = {w: (p.exists(), t) for w, p, t in named_paths(doc)}
    assert named["worker/engine/vllm_pair.py"] == (False, None)  # the path moved
    assert named["worker/engine/*.py"] == (False, None)  # a glob that matches nothing
    assert named["tests/test_cli.py::test_help"] == (True, "test_help")
    assert named["missing.md"] == (False, None)
    cli = REPO / "tests" / "test_cli.py"
    assert defines(cli, "test_help") and not defines(cli, "test_nothing")
    assert "CONTRAIL_BLOCK_MS" in code_settings()  # a worker setting the table must list
