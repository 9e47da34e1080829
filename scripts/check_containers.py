"""Cross-checks of the Dockerfile and docker-compose.yml that neither linter makes.

Reads the compose file as Docker Compose resolved it (``docker compose config --format json``,
with every required variable set to a placeholder ``__check_<NAME>__``), the raw compose file
(for its ``${...}`` interpolations) and the Dockerfile's stages, and fails when:
- a service builds a ``target`` the Dockerfile does not define;
- a long-running service has no healthcheck (one-shot services, ``restart: "no"``, are exempt);
- a Dockerfile stage that compose builds has no HEALTHCHECK, or runs as root (no USER, or
  USER root/0);
- a secret has a default: a secret-like variable (password, secret, token, key...) interpolated
  with a non-empty ``:-``/``-`` default, a secret-like environment entry whose value does not
  come from a required variable (a hard-coded value); in the Dockerfile, hadolint's DL3064
  already refuses ENV/ARG with sensitive data;
- Redis runs without ``requirepass``, or a ``CONTRAIL_REDIS_URL`` carries no password;
- a port is published on other interfaces than loopback (as resolved with the defaults);
- the API stores data in S3 but sets no ``CONTRAIL_STORAGE_PUBLIC_URL`` (presigned links would
  point at the in-network S3 host).

Usage: python scripts/check_containers.py DOCKERFILE RESOLVED_COMPOSE_JSON [RAW_COMPOSE_FILE]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

FROM_RE = re.compile(r"^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEYS?\b|ACCESS_KEY|_AUTH\b", re.I)
PLACEHOLDER = "__check_"
# ${NAME:-default} / ${NAME-default}: the default runs to the matching brace (may nest).
DEFAULTED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?-")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
REDIS_IMAGES = ("redis", "valkey")


def dockerfile_stages(text: str) -> dict[str, list[str]]:
    """Stage name -> its instruction lines (continuations joined, comments dropped)."""
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        m = FROM_RE.match(logical)
        if m:
            current = []
            stages[m.group(2) or f"stage{len(stages)}"] = current
        elif current is not None:
            current.append(logical)
        logical = ""
    return stages


def stage_user(stages: dict[str, list[str]], name: str, text: str) -> str | None:
    """The USER in force at the end of a stage (following FROM <other stage> chains)."""
    seen: set[str] = set()
    while name in stages and name not in seen:
        seen.add(name)
        users = [ln.split(None, 1)[1] for ln in stages[name] if ln.upper().startswith("USER ")]
        if users:
            return users[-1].strip()
        parent = None
        for raw in text.splitlines():
            m = FROM_RE.match(raw.strip())
            if m and m.group(2) == name:
                parent = m.group(1)
        if parent is None:
            return None
        name = parent
    return None


def _default_of(raw: str, start: int) -> str:
    """The default text of the interpolation whose default starts at `start`."""
    depth = 1
    for i in range(start, len(raw)):
        depth += {"{": 1, "}": -1}.get(raw[i], 0)
        if depth == 0:
            return raw[start:i]
    return raw[start:]


def defaulted_secrets(raw: str) -> list[str]:
    """Secret-like variables interpolated with a non-empty default in the raw compose file."""
    return [
        f"variable {m.group(1)} has a default ({_default_of(raw, m.end())!r}): make it "
        f"required, ${{{m.group(1)}:?...}}"
        for m in DEFAULTED.finditer(raw)
        if SECRET_NAME.search(m.group(1)) and _default_of(raw, m.end())
    ]


def hardcoded_secrets(compose: dict[str, Any]) -> list[str]:
    """Secret-like environment entries whose value comes from no required variable."""
    problems = []
    for name, svc in sorted(compose.get("services", {}).items()):
        for var, value in sorted((svc.get("environment") or {}).items()):
            if SECRET_NAME.search(var) and value and PLACEHOLDER not in str(value):
                problems.append(f"service {name}: {var} is hard-coded or has a default")
    return problems


def redis_problems(compose: dict[str, Any]) -> list[str]:
    problems = []
    configs = compose.get("configs", {})
    for name, svc in sorted(compose.get("services", {}).items()):
        if str(svc.get("image", "")).startswith(REDIS_IMAGES):
            text = " ".join(svc.get("command") or [])
            text += " ".join(
                str(configs.get(c.get("source"), {}).get("content", ""))
                for c in svc.get("configs") or []
            )
            if "requirepass" not in text:
                problems.append(f"service {name}: Redis without a password (requirepass)")
        url = (svc.get("environment") or {}).get("CONTRAIL_REDIS_URL")
        if url is not None and PLACEHOLDER not in (urlparse(str(url)).password or ""):
            problems.append(
                f"service {name}: CONTRAIL_REDIS_URL carries no password from a required variable"
            )
    return problems


def port_problems(compose: dict[str, Any]) -> list[str]:
    problems = []
    for name, svc in sorted(compose.get("services", {}).items()):
        for port in svc.get("ports") or []:
            if port.get("host_ip") not in LOOPBACK:
                problems.append(
                    f"service {name}: port {port.get('published')} is published on every "
                    "interface: bind it to 127.0.0.1 by default (${..._BIND:-127.0.0.1}:...)"
                )
    return problems


def public_url_problems(compose: dict[str, Any]) -> list[str]:
    problems = []
    for name, svc in sorted(compose.get("services", {}).items()):
        env = svc.get("environment") or {}
        api_on_s3 = "CONTRAIL_API_KEYS" in env and str(
            env.get("CONTRAIL_STORAGE_URL", "")
        ).startswith("s3://")
        if api_on_s3 and not env.get("CONTRAIL_STORAGE_PUBLIC_URL"):
            problems.append(
                f"service {name}: no CONTRAIL_STORAGE_PUBLIC_URL (presigned links would "
                "point at the in-network S3 host)"
            )
    return problems


def main(dockerfile: str, resolved_json: str, raw_compose: str | None = None) -> int:
    text = Path(dockerfile).read_text()
    stages = dockerfile_stages(text)
    compose = json.loads(Path(resolved_json).read_text())
    problems: list[str] = []
    if raw_compose is not None:
        problems += defaulted_secrets(Path(raw_compose).read_text())
    problems += hardcoded_secrets(compose)
    problems += redis_problems(compose)
    problems += port_problems(compose)
    problems += public_url_problems(compose)
    for name, svc in sorted(compose.get("services", {}).items()):
        one_shot = str(svc.get("restart", "")).strip('"') == "no"
        if not one_shot and not svc.get("healthcheck", {}).get("test"):
            problems.append(f"service {name}: no healthcheck")
        target = (svc.get("build") or {}).get("target")
        if svc.get("build") is None:
            continue
        if target is None:
            problems.append(f"service {name}: builds without a target")
            continue
        if target not in stages:
            problems.append(f"service {name}: Dockerfile has no stage {target!r}")
            continue
        if not any(ln.upper().startswith("HEALTHCHECK ") for ln in stages[target]):
            problems.append(f"stage {target}: no HEALTHCHECK")
        user = stage_user(stages, target, text)
        if user is None or user.split(":")[0] in ("root", "0"):
            problems.append(f"stage {target}: runs as root (USER {user})")
    for p in problems:
        print(f"check_containers: {p}", file=sys.stderr)
    if not problems:
        print(f"ok -- {len(stages)} Dockerfile stages, {len(compose.get('services', {}))} services")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
