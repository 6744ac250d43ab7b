#!/usr/bin/env python3
"""What scoped keys cost on the gateway's hot path (bench-only): one gateway process, driven
alternately with a full-access key and a scoped key, with the floor in the same run.

Started side by side on loopback:
- the shared zero-delay upstream (`upstream.py`, 20-chunk streams) on :18000;
- the direct pass-through floor (`passthrough.py`) on :14100;
- ONE gateway (`training-control serve`, Postgres, auth, alias resolution of
  `bench-agent:production`, request log on) on :14301.

Targets (for every rep and scenario, back to back, order rotated per rep):
- `full`: the key from API_KEYS (every scope, no model patterns, no limits: the scope check is
  a set lookup, no pattern, no limiter);
- `scoped`: a stored key with scope `inference`, model pattern `bench-agent:*` and rpm/tpm limits
  high enough never to refuse (so every request pays the scope check, the pattern match on the
  resolved model, the local rate-limit budget, the x-ratelimit-* headers and the token charge;
  leases are taken as the budget runs down, in the background);
- `passthrough`: the floor.

The figure is the gateway's CPU time (utime+stime of its process tree) per completed request;
the delta `scoped − full` is taken within each rep (same process, same machine state).

    bench/proxy/.venv/bin/python bench/proxy/bench_keys.py         # REPS=2, DUR=10: ~5 min
Environment: REPS (2), DUR (10), SETTLE (2), SCENARIOS (ns_c1,ns_c32,st_c1),
BENCH_DATABASE_URL (postgresql://postgres@127.0.0.1:5432/tc_bench_keys), HARNESS, RESULTS.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HARNESS = Path(os.environ.get("HARNESS", "/work/shared/bench/proxy"))
sys.path.insert(0, str(HARNESS))
from bench_clients import loadavg, wait_http  # noqa: E402  # the same harness helpers, one copy

from bench import cpu_seconds, run_loadgen, run_wrk  # type: ignore[import-not-found]  # noqa: E402

APP_PY = ROOT / ".venv/bin/python"
CLI = ROOT / ".venv/bin/training-control"
BENCH_PY = Path(sys.executable)
FULL_KEY = "sk-bench-full-access"
UPSTREAM = "http://127.0.0.1:18000"
CHAT = "/v1/chat/completions"
GATEWAY = "http://127.0.0.1:14301"
MODEL = "bench-agent:production"
DB = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tc_bench_keys")
SCENARIOS = {"ns_c1": ("wrk", 1), "ns_c32": ("wrk", 32), "st_c1": ("stream", 1), "st_c32": ("stream", 32)}

SEED_SCOPED_KEY = """
import asyncio, sys
import sqlalchemy as sa
from app.config import load_settings
from app.db import create_engine, create_sessionmaker
from app.keys import service
from app.keys.models import ApiKey
from app.keys.scopes import Scope

async def main():
    settings = load_settings(api_keys="unused", environment="development")
    engine = create_engine(settings)
    async with create_sessionmaker(engine)() as session:
        await session.execute(sa.delete(ApiKey).where(ApiKey.name == "bench-scoped"))
        options = service.KeyOptions(
            scopes=frozenset({Scope.inference}), models=("bench-agent:*",), rpm=10**9, tpm=10**9
        )
        created = await service.create_key(session, "bench-scoped", options)
        await session.commit()
    await engine.dispose()
    print(created.key)

asyncio.run(main())
"""


def main() -> None:
    reps = int(os.environ.get("REPS", "2"))
    dur = float(os.environ.get("DUR", "10"))
    settle = float(os.environ.get("SETTLE", "2"))
    scenarios = os.environ.get("SCENARIOS", "ns_c1,ns_c32,st_c1").split(",")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = Path(
        os.environ.get("RESULTS", f"{os.environ.get('TMPDIR', '/tmp')}/bench_proxy/results/keys-{stamp}")
    )
    results.mkdir(parents=True, exist_ok=True)
    raw = results / "raw.jsonl"

    name = DB.rsplit("/", 1)[1]
    admin = DB.rsplit("/", 1)[0] + "/postgres"
    exists = subprocess.run(
        ["psql", admin, "-tAc", f"SELECT 1 FROM pg_database WHERE datname='{name}'"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if exists != "1":
        subprocess.run(["psql", admin, "-qc", f'CREATE DATABASE "{name}"'], check=True)
    db_env = {**os.environ, "DATABASE_URL": DB}
    subprocess.run([str(APP_PY), str(HERE / "gateway_seed.py")], env=db_env, check=True)
    scoped_key = subprocess.run(
        [str(APP_PY), "-c", SEED_SCOPED_KEY], env=db_env, check=True, capture_output=True, text=True
    ).stdout.strip()

    procs: list[subprocess.Popen[bytes]] = []

    def start(label: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(results / f"{label}.log", "wb")  # closed with the process
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        procs.append(proc)
        return proc

    base_env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    try:
        up = start(
            "upstream",
            [str(BENCH_PY), str(HARNESS / "upstream.py"), "--port", "18000", "--chunks", "20"],
            base_env,
        )
        wait_http(UPSTREAM + "/health", up)
        floor = start(
            "passthrough",
            [
                str(APP_PY),
                str(HARNESS / "passthrough.py"),
                "--port",
                "14100",
                "--upstream",
                UPSTREAM + "/v1",
                "--key",
                "sk-bench-master",
            ],
            base_env,
        )
        wait_http("http://127.0.0.1:14100/health", floor)
        gateway_env = {
            **base_env,
            "DATABASE_URL": DB,
            "API_KEYS": FULL_KEY,
            "WANDB_BASE_URL": UPSTREAM + "/v1",
            "WANDB_API_KEY": "sk-bench-upstream",
            "ENVIRONMENT": "production",
            "RUN_WORKER": "false",
            "MIGRATE_ON_START": "false",
            "LOG_LEVEL": "WARNING",
        }
        gw = start(
            "gateway",
            [str(CLI), "serve", "--host", "127.0.0.1", "--port", "14301", "--workers", "1"],
            gateway_env,
        )
        wait_http(GATEWAY + "/healthz", gw)
        targets = {
            "passthrough": ("http://127.0.0.1:14100" + CHAT, "sk-bench-master", "bench-model", floor),
            "full": (GATEWAY + CHAT, FULL_KEY, MODEL, gw),
            "scoped": (GATEWAY + CHAT, scoped_key, MODEL, gw),
        }
        with raw.open("a") as f:
            meta = {"meta": True, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reps": reps, "dur": dur}
            f.write(json.dumps({**meta, "loadavg_start": loadavg()}) + "\n")
        for url, key, model, _ in targets.values():  # warm-up: pools, caches, the first lease
            run_wrk(url, 4, 3, key, model)
            run_loadgen(url, 4, 2, 2000, key, model, stream=True)
        time.sleep(settle)
        names = list(targets)
        for rep in range(1, reps + 1):
            k = (rep - 1) % len(names)
            order = names[k:] + names[:k]
            for scenario in scenarios:
                kind, conc = SCENARIOS[scenario]
                for target in order:
                    url, key, model, proc = targets[target]
                    load = loadavg()
                    c0 = cpu_seconds([proc.pid])
                    if kind == "wrk":
                        r = run_wrk(url, conc, dur, key, model)
                    else:
                        r = run_loadgen(url, conc, dur, 50000, key, model, stream=True)
                    c1 = cpu_seconds([proc.pid])
                    r.update({"rep": rep, "scenario": scenario, "target": target, "loadavg": load})
                    if c0 is not None and c1 is not None and r["requests"]:
                        r["cpu_ms_per_req"] = 1000.0 * (c1 - c0) / r["requests"]
                    with raw.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(
                        f"[rep {rep}] {scenario:7s} {target:12s} n={r['requests']:7d} err={r['errors']} "
                        f"rps={r['rps']:9.1f} cpu={r.get('cpu_ms_per_req', float('nan')):.4f}ms load={' '.join(load)}",
                        flush=True,
                    )
                    time.sleep(settle)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(report(raw))
    print(f"results: {results}")


def report(raw: Path) -> str:
    """The table: CPU ms/request per target and rep, and scoped − full within each rep."""
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    runs = [r for r in rows if not r.get("meta")]
    lines = [
        "| scenario | passthrough (floor) | full-access key | scoped key | scoped − full (per rep) | median Δ | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in dict.fromkeys(r["scenario"] for r in runs):
        cell: dict[str, list[float]] = {}
        errors = 0
        for r in runs:
            if r["scenario"] == scenario and "cpu_ms_per_req" in r:
                cell.setdefault(r["target"], []).append(r["cpu_ms_per_req"])
                errors += r["errors"]
        deltas = [s - f for s, f in zip(cell.get("scoped", []), cell.get("full", []), strict=False)]

        def fmt(values: list[float]) -> str:
            return " / ".join(f"{v:.3f}" for v in values) or "–"

        median = f"{statistics.median(deltas):+.3f}" if deltas else "–"
        lines.append(
            f"| {scenario} | {fmt(cell.get('passthrough', []))} | {fmt(cell.get('full', []))} | "
            f"{fmt(cell.get('scoped', []))} | {' / '.join(f'{d:+.3f}' for d in deltas) or '–'} | {median} | {errors} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 2:
        print(report(Path(sys.argv[1])))
    else:
        main()
