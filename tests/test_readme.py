"""The README's first two commands are a promise; these tests keep it.

Command 1 = set up + run the main job on embedded defaults; command 2 = set up + run the tests,
and `.ci/run` must call exactly command 2. The set-up half already ran (this suite runs inside
the venv it made), so the first command's second half is run here as written, into a temp folder.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README must open with a bash block holding its two commands"
    lines = [ln.strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_readme_opens_with_setup_then_run_and_setup_then_test() -> None:
    commands = _readme_commands()
    assert len(commands) >= 2
    assert all(c.startswith("./scripts/setup.sh && ") for c in commands[:2])
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci, ".ci/run must call the README's test command"


@pytest.mark.slow
def test_readme_first_command_makes_a_dataset(tmp_path: Path) -> None:
    run = _readme_commands()[0].split("&&", 1)[1].strip()
    argv = shlex.split(run)
    out_index = argv.index("-o") + 1
    argv[out_index] = str(tmp_path / "strategyqa.jsonl")
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    records = [json.loads(line) for line in (tmp_path / "strategyqa.jsonl").open()]
    source = json.loads((ROOT / "examples" / "strategyqa-dev-20.json").read_text())
    factual = [r for r in records if r["tag"] == "factual"]
    assert {r["item_id"] for r in factual} == {s["qid"] for s in source}
    assert any(r["tag"] == "counterfactual" for r in records)
    assert all("smollm2" in r["model"] for r in records)
    assert sum(bool(r["rationale"]) for r in records) >= 0.8 * len(records)
    assert pq.read_table(tmp_path / "strategyqa.parquet").num_rows == len(records)
