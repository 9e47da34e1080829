"""Cross-checks of the Dockerfile and docker-compose.yml that neither linter makes.

Reads the compose file as Docker Compose resolved it (``docker compose config --format json`` on
stdin-free argv) and the Dockerfile's stages, and fails when:
- a service builds a ``target`` the Dockerfile does not define;
- a long-running service has no healthcheck (one-shot services, ``restart: "no"``, are exempt);
- a Dockerfile stage that compose builds has no HEALTHCHECK, or runs as root (no USER, or
  USER root/0).

Usage: python scripts/check_containers.py DOCKERFILE RESOLVED_COMPOSE_JSON
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

FROM_RE = re.compile(r"^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)


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


def main(dockerfile: str, resolved_json: str) -> int:
    text = Path(dockerfile).read_text()
    stages = dockerfile_stages(text)
    compose = json.loads(Path(resolved_json).read_text())
    problems: list[str] = []
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
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
