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


COMPOSE_BIN_CODE = (
    "import importlib.util, pathlib; s = importlib.util.find_spec('compose'); "
    "print(pathlib.Path(s.origin).parent / 'docker-compose')"
)


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
        '    healthcheck:\n      test: ["CMD-SHELL", "redis-cli ping | grep -q PONG"]\n'
        "      interval: 5s\n      timeout: 3s\n      retries: 10\n",
        "",
    )
    result = run_check(tmp_path, compose=text)
    assert result.returncode != 0
    assert "service redis: no healthcheck" in result.stderr


REQUIRED_KEYS = "${CONTRAIL_API_KEYS:?set CONTRAIL_API_KEYS (see the top of docker-compose.yml)}"
REQUIRED_S3_SECRET = "${S3_SECRET_KEY:?set S3_SECRET_KEY (see the top of docker-compose.yml)}"


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        # the old default API key
        (REQUIRED_KEYS, "${CONTRAIL_API_KEYS:-local:change-me}", "CONTRAIL_API_KEYS has a default"),
        # a hard-coded S3 secret
        (REQUIRED_S3_SECRET, "contrail-secret", "AWS_SECRET_ACCESS_KEY is hard-coded"),
        # Redis without a password
        (
            "      requirepass ${REDIS_PASSWORD:?set REDIS_PASSWORD (see the top of "
            "docker-compose.yml)}\n",
            "",
            "service redis: Redis without a password",
        ),
        # the services reach Redis without the password
        ("redis://:${REDIS_PASSWORD:?", "redis://${REDIS_PASSWORD:?", "carries no password"),
        # the API published on every interface
        (
            '"${CONTRAIL_BIND:-127.0.0.1}:${CONTRAIL_PORT:-8000}:8000"',
            '"${CONTRAIL_PORT:-8000}:8000"',
            "service api: port 8000 is published on every interface",
        ),
        # presigned links to the in-network S3 host
        (
            "      CONTRAIL_STORAGE_PUBLIC_URL: ${CONTRAIL_STORAGE_PUBLIC_URL:-http://127.0.0.1:"
            "${S3_PORT:-8333}}\n",
            "",
            "no CONTRAIL_STORAGE_PUBLIC_URL",
        ),
    ],
    ids=[
        "default-api-key",
        "hard-coded-s3-secret",
        "redis-no-password",
        "redis-url-no-password",
        "api-on-all-interfaces",
        "no-public-s3-url",
    ],
)
def test_insecure_compose_fails(tmp_path: Path, old: str, new: str, expect: str) -> None:
    result = run_check(tmp_path, compose=broken(COMPOSE, old, new))
    assert result.returncode != 0, result.stdout
    assert expect in result.stdout + result.stderr


def test_compose_refuses_to_render_without_its_secrets(tmp_path: Path) -> None:
    """`docker compose up` fails before starting anything while a secret is unset."""
    (tmp_path / "docker-compose.yml").write_text(COMPOSE)
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-c", COMPOSE_BIN_CODE],
        capture_output=True,
        text=True,
    )
    binary = result.stdout.strip()
    secrets = {
        "CONTRAIL_API_KEYS": "alpha:sk-alpha-0123456789",
        "REDIS_PASSWORD": "0123456789abcdef",
        "S3_ACCESS_KEY": "access0123",
        "S3_SECRET_KEY": "secret0123456789",
    }
    for missing in secrets:
        env = {"PATH": "/usr/bin:/bin", **{k: v for k, v in secrets.items() if k != missing}}
        refused = subprocess.run(
            [binary, "--env-file", "/dev/null", "-f", str(tmp_path / "docker-compose.yml"),
             "--profile", "*", "config", "-q"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert refused.returncode != 0, missing
        assert f"required variable {missing} is missing a value" in refused.stderr
    every = subprocess.run(
        [binary, "--env-file", "/dev/null", "-f", str(tmp_path / "docker-compose.yml"),
         "--profile", "*", "config", "--format", "json"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **secrets}, timeout=60,
    )  # fmt: skip
    assert every.returncode == 0, every.stderr
    assert "change-me" not in every.stdout


def test_secret_in_dockerfile_fails(tmp_path: Path) -> None:
    text = broken(DOCKERFILE, "WORKDIR /app", "ENV CONTRAIL_API_KEYS=local:change-me\nWORKDIR /app")
    result = run_check(tmp_path, dockerfile=text)
    assert result.returncode != 0
    assert "DL3064" in result.stdout  # hadolint: sensitive data in ENV


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
