"""Build the engine a worker or the offline CLI decodes with.

"vllm" is the production pair engine; "reference" the plain torch engine (the oracle, and the
fallback where vLLM is not installed); "auto" picks vLLM when it imports. "simulated" has no
model: it sleeps as long as a GPU profile says (fleet-scale benchmarks only).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any, Literal

from contrail.worker.engine.base import Engine

EngineKind = Literal["auto", "vllm", "reference", "simulated"]


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def create_engine(
    kind: EngineKind,
    model: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Engine:
    """`model` is a name known to contrail.worker.models (prepared on first use) or a folder."""
    opts = dict(options or {})
    if kind == "simulated":  # no model to resolve: the name is only what jobs ask for
        from contrail.worker.engine.simulated import SimulatedEngine

        return SimulatedEngine(model, **opts)
    from contrail.worker.models import resolve_model

    spec = resolve_model(model, cache_dir)
    if kind == "vllm" or (kind == "auto" and vllm_available()):
        from contrail.worker.engine.vllm_pair import VllmOptions, VllmPairEngine

        return VllmPairEngine(str(spec.path), spec.name, VllmOptions(**opts))
    from contrail.worker.engine.reference import ReferenceEngine

    return ReferenceEngine(spec, **opts)
