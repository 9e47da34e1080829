"""The `contrail` CLI through a subprocess, against the real API server and worker, for every
subcommand, including the exit codes of failures (1 API error, 2 usage, 3 job not completed,
4 wait timeout) and that user mistakes print no traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from contrail.testing.servers import free_port, spawn, stop_process
from contrail.testing.stack import KEY_A, Stack, items_jsonl

CLI = [sys.executable, "-m", "contrail.client.cli"]


def _env(stack: Stack | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTRAIL_")}
    if stack is not None:
        env["CONTRAIL_BASE_URL"] = stack.url
        env["CONTRAIL_API_KEY"] = KEY_A
    env.update(extra)
    return env


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env=env if env is not None else _env(),
        timeout=timeout,
        cwd=cwd,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def failed(result: subprocess.CompletedProcess[str], code: int) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == code, f"rc={result.returncode}, want {code}\n{out}"
    assert "Traceback" not in out, out
    return out


# ------------------------------------------------------------------------------ no server needed


SUBCOMMANDS = [
    ["up"],
    ["serve"],
    ["serve", "api"],
    ["serve", "worker"],
    ["serve", "finalizer"],
    ["submit"],
    ["status"],
    ["wait"],
    ["results"],
    ["errors"],
    ["cancel"],
    ["jobs"],
    ["models"],
    ["models", "list"],
    ["models", "prepare"],
    ["generate"],
    ["eval"],
    ["export"],
    ["train"],
    ["eval-student"],
]


@pytest.mark.parametrize("cmd", SUBCOMMANDS, ids=lambda c: "-".join(c))
def test_help(cmd: list[str]) -> None:
    out = ok(run(*cmd, "--help", timeout=60)).stdout
    assert out.startswith("usage: contrail " + " ".join(cmd))


def test_entry_point_script() -> None:
    script = Path(sys.executable).parent / "contrail"
    assert script.exists()
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("contrail ")


def test_usage_errors(tmp_path: Path) -> None:
    good = tmp_path / "in.jsonl"
    good.write_bytes(items_jsonl(2))
    env = _env(CONTRAIL_API_KEY="k", CONTRAIL_BASE_URL=f"http://127.0.0.1:{free_port()}")
    failed(run(env=env), 2)  # no subcommand
    failed(run("bogus", env=env), 2)
    failed(run("submit", env=env), 2)  # missing file argument
    assert "no such input file" in failed(run("submit", str(tmp_path / "nope.jsonl"), env=env), 2)
    assert "lambda" in failed(run("submit", str(good), "--lambda", "3", env=env), 2)
    assert "unknown task" in failed(run("submit", str(good), "--task", "chess", env=env), 2)
    assert "KEY=VALUE" in failed(run("submit", str(good), "--metadata", "x", env=env), 2)
    assert "CONTRAIL_API_KEY" in failed(run("status", "job_1", env=_env()), 2)
    assert ".parquet" in failed(run("results", "job_1", "-o", str(tmp_path / "x.csv"), env=env), 2)
    assert "no such input file" in failed(run("generate", "nope.jsonl", "-o", "x.jsonl"), 2)
    assert ".jsonl or .parquet" in failed(run("generate", str(good), "-o", "x.txt"), 2)


def test_connection_refused_is_exit_1() -> None:
    env = _env(CONTRAIL_API_KEY="k", CONTRAIL_BASE_URL=f"http://127.0.0.1:{free_port()}")
    out = failed(run("jobs", "--max-retries", "0", env=env), 1)
    assert "contrail up" in out


def test_models_prepare(model_cache_dir: Path, tiny_model_path: Path) -> None:
    out = ok(run("models", "prepare", "tiny", "--cache-dir", str(model_cache_dir))).stdout
    assert str(tiny_model_path) in out
    assert "unknown model" in failed(
        run("models", "prepare", "no-such-model", "--cache-dir", str(model_cache_dir)), 2
    )


# ------------------------------------------------------------------------------ against the API


def test_client_commands(stack: Stack, tmp_path: Path) -> None:
    stack.worker()
    env = _env(stack)
    src = tmp_path / "items.jsonl"
    src.write_bytes(items_jsonl(10))

    assert "tiny  (1 worker)" in ok(run("models", env=env)).stdout
    listed = json.loads(ok(run("models", "list", "--json", env=env)).stdout)
    assert listed["data"][0]["id"] == "tiny"

    out_pq = tmp_path / "submitted.parquet"
    result = ok(
        run(
            "submit", str(src), "--task", "generic", "--model", "tiny",
            "--max-new-tokens", "8", "--counterfactual-fraction", "0.5", "--lambda", "0.4",
            "--metadata", "suite=cli", "--wait", "--no-progress", "-o", str(out_pq),
            "--json", env=env,
        )
    )  # fmt: skip
    job = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    job_id = job["id"]
    assert job["status"] == "completed" and job["metadata"] == {"suite": "cli"}
    assert job["decoding"]["lambda"] == 0.4
    total = job["request_counts"]["total"]
    assert pq.read_table(out_pq).num_rows == total

    status = ok(run("status", job_id, env=env)).stdout
    assert "completed" in status and job_id in status
    assert json.loads(ok(run("status", job_id, "--json", env=env)).stdout)["id"] == job_id
    assert "completed" in ok(run("wait", job_id, "--no-progress", env=env)).stdout

    lines = ok(run("results", job_id, env=env)).stdout.splitlines()
    assert len(lines) == total and json.loads(lines[0])["item_id"]
    assert len(ok(run("results", job_id, "--limit", "3", env=env)).stdout.splitlines()) == 3
    ok(run("results", job_id, "-o", str(tmp_path / "r.jsonl"), env=env))
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == total
    ok(run("results", job_id, "-o", str(tmp_path / "r.parquet"), env=env))
    assert pq.read_table(tmp_path / "r.parquet").num_rows == total
    assert ok(run("errors", job_id, env=env)).stdout == ""

    assert job_id in ok(run("jobs", env=env)).stdout
    all_jobs = json.loads(ok(run("jobs", "--all", "--limit", "1", "--json", env=env)).stdout)
    assert [j["id"] for j in all_jobs] == [job_id]

    # API failures: exit 1 with a readable message and the server's line details.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(items_jsonl(2).decode() + "{oops\n")
    out = failed(run("submit", str(bad), "--model", "tiny", env=env), 1)
    assert "422" in out and "line 3" in out
    assert "404" in failed(run("status", "job_missing", env=env), 1)
    assert "401" in failed(run("jobs", env={**env, "CONTRAIL_API_KEY": "wrong"}), 1)
    assert "404" in failed(run("results", "job_missing", env=env), 1)


def test_cancel_and_wait_exit_codes(make_stack: Any, tmp_path: Path) -> None:
    stack: Stack = make_stack(CONTRAIL_REQUIRE_LIVE_WORKER="false")  # no worker: jobs stay queued
    env = _env(stack)
    src = tmp_path / "items.jsonl"
    src.write_bytes(items_jsonl(3))
    job_id = json.loads(ok(run("submit", str(src), "--model", "tiny", "--json", env=env)).stdout)[
        "id"
    ]
    assert "still" in failed(
        run("wait", job_id, "--wait-timeout", "1", "--poll-interval", "0.2", env=env), 4
    )
    assert job_id in ok(run("cancel", job_id, env=env)).stdout
    stack.worker()  # the stack's finalizer resolves the cancellation (cancelling -> cancelled)
    out = failed(run("wait", job_id, "--no-progress", "--wait-timeout", "60", env=env), 3)
    assert "cancelled" in out


def test_serve_worker_check(make_stack: Any) -> None:
    stack: Stack = make_stack(finalizer=False)
    env = {**os.environ, **stack.env}
    stack.worker()
    assert run("serve", "worker", "--check", env=env).returncode == 0
    assert run("serve", "worker", "--check", "--model", "other", env=env).returncode == 1
    # a finalizer's check needs a live finalizer of this host, which a decode worker is not
    assert run("serve", "finalizer", "--check", env=env).returncode == 1
    stack.finalizer()
    deadline = time.monotonic() + 60
    while run("serve", "finalizer", "--check", env=env).returncode != 0:
        assert time.monotonic() < deadline, "the finalizer never announced itself"
        time.sleep(0.5)


# ------------------------------------------------------------------------------ up


def _wait_file(path: Path, proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"`contrail up` exited {proc.returncode}:\n{err}")
        if path.is_file():
            info: dict[str, Any] = json.loads(path.read_text())
            return info
        time.sleep(0.2)
    raise AssertionError(f"`contrail up` not ready after {timeout}s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_up_runs_the_stack_and_stops_cleanly(
    tmp_path: Path, service_model_cache: Path, stop_signal: signal.Signals
) -> None:
    state = tmp_path / "state"
    port = free_port()
    proc = spawn(
        [
            *CLI, "up", "--model", "tiny", "--engine", "reference", "--port", str(port),
            "--state-dir", str(state), "--cache-dir", str(service_model_cache),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"),
    )  # fmt: skip
    try:
        info = _wait_file(state / "up.json", proc, timeout=240)
        assert info["base_url"] == f"http://127.0.0.1:{port}"
        env = _env(CONTRAIL_BASE_URL=info["base_url"], CONTRAIL_API_KEY=info["api_key"])
        src = tmp_path / "items.jsonl"
        src.write_bytes(items_jsonl(4))
        job = json.loads(
            ok(
                run(
                    "submit", str(src), "--model", "tiny", "--max-new-tokens", "6", "--wait",
                    "--no-progress", "--json", env=env,
                )
            ).stdout
        )  # fmt: skip
        assert job["status"] == "completed"
        # Local storage: the dataset location is a file:// URL inside the state folder.
        ok(run("results", job["id"], "-o", str(tmp_path / "up.parquet"), env=env))
        assert pq.read_table(tmp_path / "up.parquet").num_rows == 4
        assert any((state / "storage").rglob("*.parquet"))
        assert (state / "redis" / "appendonlydir").is_dir()
        assert set(info["pids"]) == {"valkey", "api", "finalizer", "worker"}
        assert all(_alive(p) for p in [info["pid"], *info["pids"].values()])
        if stop_signal is signal.SIGINT:
            info = _worker_killed_and_restarted(state, info, env, src, proc)
        pids = [info["pid"], *info["pids"].values()]
        proc.send_signal(stop_signal)
        try:
            # Each child has its stop timeout (worker 40 s, API 15 s, valkey 10 s), then SIGKILL.
            _, err = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"`contrail up` did not stop; its stderr:\n{err[-4000:]}")
    finally:
        stop_process(proc)
    assert proc.returncode == 0, err
    assert "stopped" in err
    if stop_signal is signal.SIGINT:  # the console said what happened to the worker
        assert "exited with code -9 (killed: out of memory, or kill -9); restarting" in err, err
        assert "worker restarted (pid" in err, err
    assert not (state / "up.json").exists()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "processes left running"
    # The same state folder keeps the API key for the next start.
    assert (state / "api_key").read_text().strip() == info["api_key"]


def _worker_killed_and_restarted(
    state: Path, info: dict[str, Any], env: dict[str, str], src: Path, up: Any
) -> dict[str, Any]:
    """kill -9 the stack's worker (as the OOM killer would): `up` restarts it, says so, records
    its new pid, and the next job completes on it."""
    old = info["pids"]["worker"]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        assert up.poll() is None, "contrail up stopped when its worker died"
        now = json.loads((state / "up.json").read_text())
        if now["pids"]["worker"] != old:
            break
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.2)
    assert now["pids"]["api"] == info["pids"]["api"]
    while True:  # the dead worker's registration may lapse before the new one announces itself
        done = run(
            "submit", str(src), "--model", "tiny", "--max-new-tokens", "6", "--wait",
            "--no-progress", "--json", env=env, timeout=240,
        )  # fmt: skip
        if done.returncode == 0 or "no live worker" not in done.stderr:
            break
        assert time.monotonic() < deadline + 60, done.stderr
        time.sleep(1)
    assert json.loads(ok(done).stdout)["status"] == "completed"
    return dict(now)


def test_up_refuses_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = failed(
            run("up", "--port", str(port), "--state-dir", str(tmp_path / "s"), timeout=60), 2
        )
    assert "in use" in out


# ------------------------------------------------------------------------------ generate


def test_generate_offline(tmp_path: Path, model_cache_dir: Path, tiny_model_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(items_jsonl(4))
    out = tmp_path / "out.jsonl"
    env = _env(
        CONTRAIL_MODEL_CACHE_DIR=str(model_cache_dir),
        CONTRAIL_CACHE_DIR=str(model_cache_dir.parent),
    )
    result = ok(
        run(
            "generate", str(src), "-o", str(out), "--model", str(tiny_model_path),
            "--engine", "reference", "--max-new-tokens", "6", env=env,
        )
    )  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["records"] == 4 and summary["errors"] == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 4


def _offline_dataset(tmp_path: Path, tiny_model_path: Path) -> Path:
    """A real dataset from the offline generator (tiny model, reference engine)."""
    out = tmp_path / "data.jsonl"
    env = _env(CONTRAIL_CACHE_DIR=str(tiny_model_path.parent.parent))
    sample = Path(__file__).resolve().parents[1] / "examples" / "strategyqa-dev-20.json"
    ok(
        run(
            "generate", str(sample), "--task", "strategyqa",
            "--model", str(tiny_model_path), "--engine", "reference", "--max-new-tokens", "8",
            "--counterfactual-fraction", "0.5", "-o", str(out), env=env,
        )
    )  # fmt: skip
    return out


def test_eval_and_export_subcommands(tmp_path: Path, tiny_model_path: Path) -> None:
    data = _offline_dataset(tmp_path, tiny_model_path)
    summary = tmp_path / "quality.json"
    ok(run("eval", str(data), "--no-las", "--json", str(summary)))
    assert json.loads(summary.read_text()), "eval --json should write the summaries"

    out_dir = tmp_path / "student"
    ok(run("export", str(data), "--out-dir", str(out_dir)))
    exported = list(out_dir.glob("*.jsonl"))
    assert exported, "export should write train/dev JSONL"
    rows = [json.loads(line) for f in exported for line in f.open()]
    source = [json.loads(line) for line in data.open()]
    assert len(rows) == len(source)
    assert all(r["input"].startswith(("[factual]", "[counterfactual]")) for r in rows)

    failed(run("eval", str(tmp_path / "missing.jsonl")), 2)
    failed(run("export", str(tmp_path / "missing.jsonl"), "--out-dir", str(out_dir)), 2)


def test_train_and_eval_student_on_a_job(
    stack: Stack, tmp_path: Path, tiny_model_path: Path
) -> None:
    """The student loop through the real stack: a job's rationales, `contrail train` on its id,
    `contrail eval-student` on the items the student never saw."""
    stack.worker()
    env = _env(stack)
    src = tmp_path / "items.jsonl"
    src.write_bytes(items_jsonl(24))
    result = ok(
        run(
            "submit", str(src), "--model", "tiny", "--max-new-tokens", "12",
            "--counterfactual-fraction", "1", "--wait", "--no-progress", "--json", env=env,
        )
    )  # fmt: skip
    job = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert job["status"] == "completed"
    out = tmp_path / "student"
    ok(
        run(
            "train", job["id"], "--out-dir", str(out), "--model", str(tiny_model_path),
            "--epochs", "1", "--batch-size", "8", "--dev-fraction", "0.25", env=env, timeout=600,
        )
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["examples"]["train"]["counterfactual"] > 0  # scott, the default objective
    assert report["teachers"] == ["tiny"] and report["items"]["dev"] > 0
    # Provenance: the job as fetched, and the decoding settings its records carry.
    assert report["source"] == "job" and report["job"]["id"] == job["id"]
    assert report["job"]["decoding"]["max_new_tokens"] == 12
    assert {d["decoding"]["max_new_tokens"] for d in report["decoding_settings"]} == {12}
    scores = tmp_path / "eval.json"
    ok(
        run(
            "eval-student", job["id"], "--student", f"s={out / 'model'}",
            "--student", f"base={tiny_model_path}", "--dev-fraction", "0.25", "--no-las",
            "--max-new-tokens", "8", "--bootstrap", "50", "--json", str(scores), env=env,
            timeout=600,
        )
    )  # fmt: skip
    payload = json.loads(scores.read_text())
    first = payload["evaluations"][0]
    assert first["items"] == report["items"]["dev"]
    assert all(r["following"] is not None for r in first["results"])  # every item has a cf
    (comparison,) = payload["comparisons"]
    assert comparison["a"] == "base" and comparison["b"] == "s"
    assert comparison["items"] == first["items"]
