#!/usr/bin/env bash
# The gateway benchmark: training-control's /v1/chat/completions and the LiteLLM proxy, one
# after the other in the same run, each with the shared harness (shared/bench/proxy: run.sh,
# direct vs proxy interleaved, REPS repetitions), then the comparison table (compare.py).
#
# The gateway runs as in production: `training-control serve --workers 1` (uvicorn, uvloop,
# httptools), Postgres, auth on (a key from API_KEYS), the request log on, and the model name
# `bench-agent:production` resolved through an alias in the registry (gateway_seed.py).
#
#   VENV=bench/proxy/.venv bash ../shared/bench/proxy/setup.sh   # once: wrk + LiteLLM 1.106.2 venv
#   bash bench/proxy/bench_gateway.sh                           # ~20 min with REPS=2
#
# Environment (defaults):
#   BENCH_DATABASE_URL  postgresql://postgres@127.0.0.1:5432/tc_bench (created if missing)
#   GATEWAY_PORT 14200, PROXY_PORT 14000 (LiteLLM), UPSTREAM_PORT 18000
#   TARGETS "gateway litellm"   which proxies to measure
#   RESULTS ${TMPDIR:-/tmp}/bench_proxy/results/gateway-<stamp>
#   HARNESS <repo>/../shared/bench/proxy      the shared harness, used in place (read-only)
#   INFERENCE__* settings pass through to the gateway (e.g. INFERENCE__REQUEST_LOG=false)
#   every run.sh variable (REPS, DUR_*, SCENARIOS, ...) passes through.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
APP_PY="$ROOT/.venv/bin/python"
HARNESS="${HARNESS:-$(cd "$ROOT/../shared/bench/proxy" && pwd)}"
export VENV="${VENV:-$HERE/.venv}"
BENCH_PY="$VENV/bin/python"
DB="${BENCH_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/tc_bench}"
GATEWAY_PORT="${GATEWAY_PORT:-14200}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18000}"
TARGETS="${TARGETS:-gateway litellm}"
STAMP="$(date +%Y%m%d-%H%M%S)"
RESULTS="${RESULTS:-${TMPDIR:-/tmp}/bench_proxy/results/gateway-$STAMP}"
KEY="sk-bench-gateway"
mkdir -p "$RESULTS"
[[ -x "$BENCH_PY" ]] || { echo "create the bench venv first: VENV=$VENV bash $HARNESS/setup.sh" >&2; exit 1; }

if [[ "$DB" == postgresql* ]]; then
  name="${DB##*/}"
  admin="${DB%/*}/postgres"
  psql "$admin" -tAc "SELECT 1 FROM pg_database WHERE datname='$name'" | grep -q 1 \
    || psql "$admin" -qc "CREATE DATABASE \"$name\""
fi
DATABASE_URL="$DB" "$APP_PY" "$HERE/gateway_seed.py"

for target in $TARGETS; do
  case "$target" in
    gateway)
      # exec'd by bench_cmd.sh, so its PID is the one uvicorn process whose CPU is measured
      PROXY_CMD="env DATABASE_URL=$DB API_KEYS=$KEY WANDB_BASE_URL=http://127.0.0.1:$UPSTREAM_PORT/v1 \
WANDB_API_KEY=sk-bench-upstream ENVIRONMENT=production RUN_WORKER=false MIGRATE_ON_START=false \
LOG_LEVEL=WARNING $ROOT/.venv/bin/training-control serve --host 127.0.0.1 --port $GATEWAY_PORT --workers 1" \
      PROXY_URL="http://127.0.0.1:$GATEWAY_PORT" HEALTH_PATH=/healthz PROXY_API_KEY="$KEY" \
      PROXY_MODEL="bench-agent:production" UPSTREAM_URL="http://127.0.0.1:$UPSTREAM_PORT" PY="$BENCH_PY" \
      LABEL=gateway RESULTS="$RESULTS" OUT="$RESULTS/gateway" bash "$HARNESS/bench_cmd.sh"
      ;;
    litellm)
      WORKERS=1 RESULTS="$RESULTS" UPSTREAM_PORT="$UPSTREAM_PORT" bash "$HARNESS/bench_litellm.sh"
      mv "$RESULTS"/litellm-uvicorn-w1-*/ "$RESULTS/litellm" 2>/dev/null || true
      ;;
    *) echo "unknown target $target" >&2; exit 1 ;;
  esac
  sleep 3
done

args=()
[[ -f "$RESULTS/gateway/raw.jsonl" ]] && args+=(--gateway "$RESULTS/gateway/raw.jsonl")
[[ -f "$RESULTS/litellm/raw.jsonl" ]] && args+=(--litellm "$RESULTS/litellm/raw.jsonl")
"$BENCH_PY" "$HERE/compare.py" "${args[@]}" | tee "$RESULTS/comparison.md"
echo "results: $RESULTS"
