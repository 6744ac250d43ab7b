#!/usr/bin/env bash
# Memory soak of the gateway: start upstream.py and `training-control serve --workers 1`
# (Postgres, auth, alias resolution, request log, captures), run soak.py (RSS before and after
# 200k requests), stop both by PID.
#
#   bash bench/proxy/bench_soak.sh            # SOAK_TOTAL=200000 by default, ~5 min
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
HARNESS="${HARNESS:-/work/shared/bench/proxy}"
BENCH_PY="${VENV:-$HERE/.venv}/bin/python"
DB="${BENCH_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/tc_bench}"
GATEWAY_PORT="${GATEWAY_PORT:-14200}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18000}"
RESULTS="${RESULTS:-${TMPDIR:-/tmp}/bench_proxy/results/soak-$(date +%Y%m%d-%H%M%S)}"
KEY="sk-bench-gateway"
mkdir -p "$RESULTS"

UP_PID=""; GW_PID=""
stop_pid() {
  local p="$1"; [[ -z "$p" ]] && return 0
  kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
}
trap 'stop_pid "$GW_PID"; stop_pid "$UP_PID"' EXIT INT TERM

DATABASE_URL="$DB" "$ROOT/.venv/bin/python" "$HERE/gateway_seed.py"
"$BENCH_PY" "$HARNESS/upstream.py" --port "$UPSTREAM_PORT" >"$RESULTS/upstream.log" 2>&1 &
UP_PID=$!
env DATABASE_URL="$DB" API_KEYS="$KEY" WANDB_BASE_URL="http://127.0.0.1:$UPSTREAM_PORT/v1" \
  WANDB_API_KEY=sk-bench-upstream ENVIRONMENT=production RUN_WORKER=false MIGRATE_ON_START=false \
  LOG_LEVEL=WARNING "$ROOT/.venv/bin/training-control" serve --host 127.0.0.1 --port "$GATEWAY_PORT" --workers 1 \
  >"$RESULTS/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 1 120); do curl -sf -m 1 -o /dev/null "http://127.0.0.1:$GATEWAY_PORT/healthz" && break; sleep 0.5; done
kill -0 "$GW_PID" || { echo "gateway did not start" >&2; tail "$RESULTS/gateway.log" >&2; exit 1; }
"$BENCH_PY" "$HERE/soak.py" --harness "$HARNESS" --pid "$GW_PID" --url "http://127.0.0.1:$GATEWAY_PORT" --api-key "$KEY" \
  --total "${SOAK_TOTAL:-200000}" | tee "$RESULTS/soak.txt"
echo "results: $RESULTS"
