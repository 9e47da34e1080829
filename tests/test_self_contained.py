"""The suite reads nothing outside the checkout: a user's fresh clone, with nothing beside it,
passes it. No test module may name the development machines' shared folder or climb out of the
repository by path, and the research data the tests read is in tests/data/research with its
licenses."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
OUTSIDE = [
    re.compile(r"\.\./shared|shared/data|[\"']shared[\"']"),  # the shared folder beside a checkout
    re.compile(r"parents\[(?:[2-9]|\d{2,})\]"),  # a path climbing past the repository root
    re.compile(r"\.parent\.parent\.parent"),
]


def test_no_test_module_reads_outside_the_repository() -> None:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if path == Path(__file__).resolve():
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(p.search(line) for p in OUTSIDE):
                found.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert found == []


def test_the_research_data_is_in_the_repository_with_its_licenses() -> None:
    from tests.research_data import DATA

    assert DATA.is_relative_to(REPO)
    for task, files in {
        "strategyqa": ["dev.json", "train.json"],
        "creak": ["dev.json"],
        "csqa": ["dev_rand_split.jsonl", "cose_dev_v1.0.jsonl", "dev_v1.11.hf.jsonl"],
    }.items():
        assert (DATA / task / "LICENSE").is_file(), task
        for name in files:
            assert (DATA / task / name).stat().st_size > 0, (task, name)
    assert (DATA / "SOURCES.md").is_file()
