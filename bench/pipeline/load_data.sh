#!/usr/bin/env bash
# Game databases for the pipeline benchmark, made with the game's data generator
# (../../../shared/babylon/generate.py, seed 1). Existing databases are kept (reuse them:
# the 1M ones take 2–3 min and 4.5 GiB each).
#
#   PGHOST=127.0.0.1 PGUSER=postgres bench/pipeline/load_data.sh [100k 1m 1m_w240]
#
#   babylon_bench_100k      24 windows × 350 agents × 12 ticks  =   100,800 trajectories
#   babylon_bench_1m        24 windows × 3,500 agents × 12 ticks = 1,008,000 (10× larger windows)
#   babylon_bench_1m_w240  240 windows × 350 agents × 12 ticks  = 1,008,000 (100k's windows, 10× as many)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
GEN=${TC_SHARED_DIR:-../shared}/babylon/generate.py
export PGHOST="${PGHOST:-127.0.0.1}" PGUSER="${PGUSER:-postgres}" PGPORT="${PGPORT:-5432}"
DSN_BASE="postgresql://$PGUSER@$PGHOST:$PGPORT"
scales=("$@"); [[ ${#scales[@]} -gt 0 ]] || scales=(100k 1m 1m_w240)
for s in "${scales[@]}"; do
  case "$s" in
    100k)    db=babylon_bench_100k;     args=(--windows 24  --agents 350  --ticks 12) ;;
    1m)      db=babylon_bench_1m;       args=(--windows 24  --agents 3500 --ticks 12) ;;
    1m_w240) db=babylon_bench_1m_w240;  args=(--windows 240 --agents 350  --ticks 12 --batch-windows 24) ;;
    *) echo "unknown scale $s" >&2; exit 2 ;;
  esac
  if psql -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    echo "== $db exists, kept" >&2
    continue
  fi
  createdb "$db"
  echo "== $db: ${args[*]}" >&2
  "$PY" "$GEN" --dsn "$DSN_BASE/$db" "${args[@]}" --seed 1 --create-schema
done
