#!/usr/bin/env bash
# The whole check CI runs: lint, types, then the test suite (which starts and stops its own real
# servers: Valkey as Redis, SeaweedFS as S3, the API and workers as processes).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy client service worker
exec .venv/bin/pytest -q "$@"
