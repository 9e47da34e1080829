#!/usr/bin/env bash
# A whole local run: start the stack (`contrail up`: Valkey, local-disk storage, the API, one CPU
# worker with the default model), submit 20 StrategyQA dev items with contrastive decoding
# (wrong-answer perturbation) and counterfactuals, show progress, print where the dataset is and a
# few rationales, then stop everything (nothing is left running, also on Ctrl-C or an error).
#
#   scripts/demo.sh                    # after scripts/setup.sh
# Environment: CONTRAIL_DEMO_DATA (StrategyQA's JSON array, submitted as it is; default
# examples/strategyqa-dev-20.json), CONTRAIL_DEMO_PORT (8000), CONTRAIL_DEMO_STATE (.contrail/demo),
# CONTRAIL_DEMO_MODEL (smollm2-135m), CONTRAIL_DEMO_ENGINE (vllm if installed, else reference),
# CONTRAIL_DEMO_KEEP (auto: in a terminal, keep the stack up for the viewer until Enter; 1; 0).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV_BIN:-.venv/bin}
DATA=${CONTRAIL_DEMO_DATA:-examples/strategyqa-dev-20.json}
PORT=${CONTRAIL_DEMO_PORT:-8000}
STATE=${CONTRAIL_DEMO_STATE:-.contrail/demo}
MODEL=${CONTRAIL_DEMO_MODEL:-smollm2-135m}
ENGINE_ARGS=()
[ -n "${CONTRAIL_DEMO_ENGINE:-}" ] && ENGINE_ARGS=(--engine "$CONTRAIL_DEMO_ENGINE")

[ -f "$DATA" ] || { echo "demo: no StrategyQA data at $DATA (set CONTRAIL_DEMO_DATA)" >&2; exit 2; }
mkdir -p "$STATE"

rm -f "$STATE/up.json"
"$BIN/contrail" up --port "$PORT" --state-dir "$STATE" --model "$MODEL" "${ENGINE_ARGS[@]}" &
UP=$!
stop() {
  if kill -0 "$UP" 2>/dev/null; then
    kill -TERM "$UP" 2>/dev/null || true
    wait "$UP" 2>/dev/null || true
  fi
}
trap stop EXIT
trap 'exit 130' INT TERM

echo "demo: waiting for the stack (first run converts the model, ~1 min)" >&2
while [ ! -f "$STATE/up.json" ]; do
  kill -0 "$UP" 2>/dev/null || { echo "demo: contrail up failed (logs in $STATE/logs)" >&2; exit 1; }
  sleep 1
done
eval "$("$BIN/python" -c '
import json, shlex, sys
info = json.load(open(sys.argv[1]))
print("export CONTRAIL_BASE_URL=" + shlex.quote(info["base_url"]))
print("export CONTRAIL_API_KEY=" + shlex.quote(info["api_key"]))
' "$STATE/up.json")"

VIEWER="$CONTRAIL_BASE_URL/ui/"
echo "demo: watch the job arrive in the viewer: $VIEWER (sign in with the API key $CONTRAIL_API_KEY)" >&2

JOB_JSON="$STATE/last-job.json"
"$BIN/contrail" submit "$DATA" --task strategyqa --model "$MODEL" \
  --mode contrastive --perturbation wrong --lambda 0.5 --counterfactual-fraction 0.5 \
  --max-new-tokens 64 --wait --json > "$JOB_JSON"
JOB=$("$BIN/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$JOB_JSON")

echo
echo "== job $JOB"
"$BIN/contrail" status "$JOB"
echo
echo "== dataset"
"$BIN/contrail" dataset "$JOB"
"$BIN/contrail" results "$JOB" -o "$STATE/$JOB.parquet"
echo "copy      $STATE/$JOB.parquet"
echo
echo "== a few rationales"
"$BIN/contrail" results "$JOB" --limit 6 | "$BIN/python" -c '
import json, sys, textwrap
for line in sys.stdin:
    r = json.loads(line)
    tag, question, answer, gold = r["tag"], r["question"], r["answer"], r["gold_answer"]
    contrast = r["decoding"]["contrast_answer"]
    print(f"[{tag}] Q: {question}")
    print(f"  answer {answer!r} (gold {gold!r}), contrast {contrast!r}")
    print(textwrap.indent(textwrap.fill(r["rationale"].strip() or "(empty)", 96), "  "))
'
echo
KEEP=${CONTRAIL_DEMO_KEEP:-auto}
if [ "$KEEP" = 1 ] || { [ "$KEEP" = auto ] && [ -t 0 ] && [ -t 1 ]; }; then
  echo "== viewer"
  echo "open      ${VIEWER}#/jobs/$JOB/rationales"
  echo "API key   $CONTRAIL_API_KEY"
  read -r -p "The stack stays up for the viewer; press Enter to stop it. " _ || true
fi
echo "demo: done; stopping the stack" >&2
