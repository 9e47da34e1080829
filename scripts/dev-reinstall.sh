#!/usr/bin/env bash
# Re-run the strict editable install (needed after adding a module; see docs/DEVELOPING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pip install -q 2>/dev/null --no-deps --no-build-isolation -e . --config-settings editable_mode=strict
