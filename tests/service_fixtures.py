"""Pytest fixtures for the service tests: a real stack (Valkey + SeaweedFS + API + workers),
built from contrail.testing (which bench/ uses too).

Loaded from tests/conftest.py through `pytest_plugins`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contrail.testing.servers import SeaweedS3, Valkey, seaweed
from contrail.testing.stack import Stack


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    with seaweed() as server:
        yield server


@pytest.fixture
def own_s3() -> Iterator[SeaweedS3]:
    """A SeaweedFS of one test alone, which it may stop and start again (outage tests)."""
    with seaweed() as server:
        yield server


@pytest.fixture(scope="session")
def service_model_cache(tiny_model_path: Path) -> Path:
    # tiny_model_path lives at <cache>/<name>; the worker resolves "tiny" from the same cache.
    return tiny_model_path.parent


@pytest.fixture
def make_stack(tmp_path: Path, s3_server: SeaweedS3, service_model_cache: Path) -> Iterator[Any]:
    stacks: list[Stack] = []
    valkeys: list[Valkey] = []

    def make(
        *,
        aof: bool = False,
        start_api: bool = True,
        s3: SeaweedS3 | None = None,
        finalizer: bool = True,
        **env: str,
    ) -> Stack:
        vk = Valkey(tmp_path / f"valkey{len(valkeys)}", aof=aof).start()
        valkeys.append(vk)
        stack = Stack(
            tmp_path, s3 or s3_server, vk, service_model_cache, finalizer=finalizer, **env
        )
        stacks.append(stack)
        if start_api:
            stack.start_api()
        return stack

    yield make
    for s in stacks:
        s.stop()
    for vk in valkeys:
        vk.stop()


@pytest.fixture
def stack(make_stack: Any) -> Stack:
    result: Stack = make_stack()
    return result


def worker_settings(stack: Stack, **overrides: Any) -> Any:
    """WorkerSettings of this stack, for a worker run in the test process."""
    from contrail.worker.settings import WorkerSettings

    env: dict[str, Any] = {
        k.removeprefix("CONTRAIL_").lower(): v
        for k, v in stack.env.items()
        if k.startswith("CONTRAIL_")
    }
    env["engine_options"] = json.loads(env.get("engine_options", "{}"))
    for k, v in stack.s3.env().items():
        os.environ[k] = v
    return WorkerSettings.model_validate({**env, **overrides})
