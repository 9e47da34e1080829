"""The README's first two commands are a promise; these tests keep it.

Command 1 = set up + run the main job on embedded defaults; command 2 = set up + run the tests,
and `.ci/run` must call exactly command 2. The set-up half already ran (this suite runs inside
the venv it made), so the first command's second half is run here as written, into a temp folder.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from contrail.testing.servers import spawn, stop_process

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert blocks, "README must open with a bash block holding its two commands"
    return [
        [ln.strip() for ln in b.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        for b in blocks
    ]


def _readme_commands() -> list[str]:
    return _bash_blocks()[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_readme_opens_with_setup_then_run_and_setup_then_test() -> None:
    commands = _readme_commands()
    assert len(commands) >= 2
    assert all(c.startswith("./scripts/setup.sh && ") for c in commands[:2])
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci, ".ci/run must call the README's test command"


@pytest.mark.slow
def test_readme_first_command_runs_the_local_stack_and_stops_it(tmp_path: Path) -> None:
    run = _readme_commands()[0].split("&&", 1)[1].strip()
    state = tmp_path / "demo"
    env = {**os.environ, "CONTRAIL_DEMO_STATE": str(state), "CONTRAIL_DEMO_PORT": str(_free_port())}
    # spawned like the suite's servers: tied to this process and recorded for .ci/run's cleanup
    proc = spawn(
        shlex.split(run),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=1500)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, (stdout[-2000:], stderr[-3000:])
    assert "== a few rationales" in stdout
    parquet = list(state.glob("*.parquet"))
    assert parquet, "the demo should save the dataset"
    table = pq.read_table(parquet[0]).to_pylist()
    source = json.loads((ROOT / "examples" / "strategyqa-dev-20.json").read_text())
    assert {r["item_id"] for r in table if r["tag"] == "factual"} == {s["qid"] for s in source}
    assert any(r["tag"] == "counterfactual" for r in table)
    left = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True)
    assert left.stdout.strip() == "", "the demo left processes running"


@pytest.mark.slow
def test_readme_offline_command_makes_a_dataset(tmp_path: Path) -> None:
    run = _bash_blocks()[1][0]
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
