#!/usr/bin/env bash
# Gateway CPU per request, `bench-agent:production` with and without a running rollout, in one
# gateway process (rollout_cpu.py alternates the two). Starts upstream.py and
# `training-control serve --workers 1` (Postgres, auth, request log, captures; RUN_WORKER=false,
# so the rollouts are never decided meanwhile), stops both by PID. ~2 minutes by default.
#
#   bash bench/proxy/rollout_cpu.sh                  # REPS=4 SECONDS_PER_PHASE=12
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
HARNESS="${HARNESS:-/work/shared/bench/proxy}"
BENCH_PY="${VENV:-$HERE/.venv}/bin/python"
DB_NAME="${BENCH_DB_NAME:-rollouts_tc_bench}"
DB="postgresql://postgres@127.0.0.1:5432/$DB_NAME"
GATEWAY_PORT="${GATEWAY_PORT:-14290}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18090}"
RESULTS="${RESULTS:-${TMPDIR:-/tmp}/bench_proxy/results/rollout-$(date +%Y%m%d-%H%M%S)}"
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

psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $DB_NAME"
DATABASE_URL="$DB" "$ROOT/.venv/bin/python" "$HERE/gateway_seed.py"
# the candidate: step 2 of the same line (and no rollout left running from an earlier run)
DATABASE_URL="$DB" "$ROOT/.venv/bin/python" - <<'PY'
import asyncio, os
import sqlalchemy as sa
from app.config import load_settings, normalise_database_url
from app.db import create_engine, create_sessionmaker
from app.registry.models import Rollout
from app.registry.service import find_model_line, record_checkpoint

async def main() -> None:
    settings = load_settings(database_url=normalise_database_url(os.environ["DATABASE_URL"]), api_keys="unused")
    engine = create_engine(settings)
    async with create_sessionmaker(engine)() as session:
        await session.execute(sa.delete(Rollout))
        await record_checkpoint(session, await find_model_line(session, "bench-agent"), step=2, metrics={})
        await session.commit()
    await engine.dispose()

asyncio.run(main())
PY
"$BENCH_PY" "$HARNESS/upstream.py" --port "$UPSTREAM_PORT" >"$RESULTS/upstream.log" 2>&1 &
UP_PID=$!
env DATABASE_URL="$DB" API_KEYS="$KEY" WANDB_BASE_URL="http://127.0.0.1:$UPSTREAM_PORT/v1" \
  WANDB_API_KEY=sk-bench-upstream ENVIRONMENT=production RUN_WORKER=false MIGRATE_ON_START=false \
  LOG_LEVEL=WARNING "$ROOT/.venv/bin/training-control" serve --host 127.0.0.1 --port "$GATEWAY_PORT" --workers 1 \
  >"$RESULTS/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 1 120); do curl -sf -m 1 -o /dev/null "http://127.0.0.1:$GATEWAY_PORT/healthz" && break; sleep 0.5; done
kill -0 "$GW_PID" || { echo "gateway did not start" >&2; tail "$RESULTS/gateway.log" >&2; exit 1; }
cd "$HERE"
"$BENCH_PY" "$HERE/rollout_cpu.py" --pid "$GW_PID" --url "http://127.0.0.1:$GATEWAY_PORT" --api-key "$KEY" \
  --reps "${REPS:-4}" --seconds "${SECONDS_PER_PHASE:-12}" | tee "$RESULTS/rollout_cpu.txt"
echo "results: $RESULTS"
