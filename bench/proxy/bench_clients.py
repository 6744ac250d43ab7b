#!/usr/bin/env python3
"""Interleaved benchmark of the gateway's upstream-client choices, LiteLLM and the floor (bench-only).

One run starts, side by side on loopback:
- the shared zero-delay upstream (`upstream.py`, 20-chunk streams) on :18000 (LiteLLM's config
  points there);
- the direct pass-through floor (`passthrough.py`: Starlette + one shared httpx client);
- one gateway process per upstream client (`serve_variant.py --client …`: aiohttp,
  httpx_aiohttp, httpx, legacy), each `training-control serve` with Postgres, auth, alias
  resolution (`bench-agent:production`) and the request log on;
- LiteLLM 1.106.2 (the shared `litellm_config.yaml`, 1 worker).

Then for every rep and scenario it measures every target back to back (direct first, then the
others in an order rotated per rep), so all see the same machine state; the target's CPU time
(utime+stime of its process tree, /proc) over the completed requests is the headline figure.
Every process started here is stopped by its PID at the end.

    bench/proxy/.venv/bin/python bench/proxy/bench_clients.py            # ~16 min with REPS=2
    REPS=1 DUR=5 bench/proxy/.venv/bin/python bench/proxy/bench_clients.py   # a quick look

Environment: REPS (2), DUR (10 s per run), SETTLE (2 s), TARGETS (all: passthrough, aiohttp,
httpx_aiohttp, httpx, legacy, litellm), SCENARIOS (ns_c1,ns_c32,ns_c128,st_c1,st_c32),
BENCH_DATABASE_URL (postgresql://postgres@127.0.0.1:5432/tc_bench_gateway), HARNESS
(/work/shared/bench/proxy), RESULTS (${TMPDIR:-/tmp}/bench_proxy/results/clients-<stamp>).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HARNESS = Path(os.environ.get("HARNESS", "/work/shared/bench/proxy"))
sys.path.insert(0, str(HARNESS))
from bench import cpu_seconds, run_loadgen, run_wrk  # type: ignore[import-not-found]  # noqa: E402

APP_PY = ROOT / ".venv/bin/python"
BENCH_PY = Path(sys.executable)
KEY = "sk-bench-gateway"
UPSTREAM = "http://127.0.0.1:18000"
CHAT = "/v1/chat/completions"
GATEWAY_MODEL = "bench-agent:production"
DB = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tc_bench_gateway")
VARIANT_PORTS = {"aiohttp": 14201, "httpx_aiohttp": 14202, "httpx": 14203, "legacy": 14204}
ALL_TARGETS = ["passthrough", "aiohttp", "httpx_aiohttp", "httpx", "legacy", "litellm"]
SCENARIOS = {
    "ns_c1": ("wrk", 1),
    "ns_c32": ("wrk", 32),
    "ns_c128": ("wrk", 128),
    "st_c1": ("stream", 1),
    "st_c32": ("stream", 32),
}


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {proc.returncode}")
        with contextlib.suppress(Exception):
            urllib.request.urlopen(url, timeout=2).read()
            return
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {seconds:g}s")


class Fleet:
    """Processes started by this run, stopped by PID."""

    def __init__(self, results: Path) -> None:
        self.results = results
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.results / f"{name}.log", "wb")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    reps = int(os.environ.get("REPS", "2"))
    dur = float(os.environ.get("DUR", "10"))
    settle = float(os.environ.get("SETTLE", "2"))
    targets = os.environ.get("TARGETS", " ".join(ALL_TARGETS)).split()
    scenarios = os.environ.get("SCENARIOS", ",".join(SCENARIOS)).split(",")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = Path(
        os.environ.get("RESULTS", f"{os.environ.get('TMPDIR', '/tmp')}/bench_proxy/results/clients-{stamp}")
    )
    results.mkdir(parents=True, exist_ok=True)
    raw = results / "raw.jsonl"

    # the bench database: created if missing, seeded (migrations, model line, alias, empty log)
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
    subprocess.run(
        [str(APP_PY), str(HERE / "gateway_seed.py")], env={**os.environ, "DATABASE_URL": DB}, check=True
    )

    fleet = Fleet(results)
    base_env = {k: v for k, v in os.environ.items() if not k.endswith("_PROXY") and not k.endswith("_proxy")}
    endpoints: dict[str, tuple[str, str, str, subprocess.Popen[bytes] | None]] = {}
    try:
        up = fleet.start(
            "upstream",
            [str(BENCH_PY), str(HARNESS / "upstream.py"), "--port", "18000", "--chunks", "20"],
            base_env,
        )
        wait_http(UPSTREAM + "/health", up)
        endpoints["direct"] = (UPSTREAM + CHAT, "", "bench-model", None)
        if "passthrough" in targets:
            p = fleet.start(
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
            wait_http("http://127.0.0.1:14100/health", p)
            endpoints["passthrough"] = ("http://127.0.0.1:14100" + CHAT, "sk-bench-master", "bench-model", p)
        gw_env = {
            **base_env,
            "DATABASE_URL": DB,
            "API_KEYS": KEY,
            "WANDB_BASE_URL": UPSTREAM + "/v1",
            "WANDB_API_KEY": "sk-bench-upstream",
            "ENVIRONMENT": "production",
            "RUN_WORKER": "false",
            "MIGRATE_ON_START": "false",
            "LOG_LEVEL": "WARNING",
        }
        for variant, port in VARIANT_PORTS.items():
            if variant not in targets:
                continue
            g = fleet.start(
                variant,
                [
                    str(APP_PY),
                    str(HERE / "serve_variant.py"),
                    "--client",
                    variant,
                    "--",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                ],
                gw_env,
            )
            wait_http(f"http://127.0.0.1:{port}/healthz", g)
            endpoints[variant] = (f"http://127.0.0.1:{port}{CHAT}", KEY, GATEWAY_MODEL, g)
        if "litellm" in targets:
            ll_env = {
                **base_env,
                "LITELLM_LOG": "ERROR",
                "LITELLM_MODE": "PRODUCTION",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "DISABLE_ADMIN_UI": "True",
            }
            ll_env.pop("DATABASE_URL", None)
            ll = fleet.start(
                "litellm",
                [
                    str(BENCH_PY.parent / "litellm"),
                    "--config",
                    str(HARNESS / "litellm_config.yaml"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "14000",
                    "--num_workers",
                    "1",
                ],
                ll_env,
            )
            wait_http("http://127.0.0.1:14000/health/liveliness", ll)
            time.sleep(3)
            endpoints["litellm"] = ("http://127.0.0.1:14000" + CHAT, "sk-bench-master", "bench-model", ll)

        with raw.open("a") as f:
            f.write(
                json.dumps(
                    {
                        "meta": True,
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "reps": reps,
                        "dur": dur,
                        "targets": list(endpoints),
                        "loadavg_start": loadavg(),
                    }
                )
                + "\n"
            )
        for url, key, model, _ in endpoints.values():  # warm-up: pools, caches, lazy imports
            run_wrk(url, 4, 3, key, model)
            run_loadgen(url, 4, 2, 2000, key, model, stream=True)
        time.sleep(settle)

        measured = [t for t in endpoints if t != "direct"]
        for rep in range(1, reps + 1):
            k = (rep - 1) % len(measured)
            order = ["direct", *measured[k:], *measured[:k]]
            for scenario in scenarios:
                kind, conc = SCENARIOS[scenario]
                for target in order:
                    url, key, model, proc = endpoints[target]
                    pids = [proc.pid] if proc is not None else []
                    load = loadavg()
                    c0 = cpu_seconds(pids)
                    t0 = time.time()
                    if kind == "wrk":
                        r = run_wrk(url, conc, dur, key, model)
                    else:
                        r = run_loadgen(url, conc, dur, 50000, key, model, stream=True)
                    c1 = cpu_seconds(pids)
                    r.update(
                        {
                            "rep": rep,
                            "scenario": scenario,
                            "target": target,
                            "concurrency": conc,
                            "t_start": t0,
                            "loadavg": load,
                        }
                    )
                    if c0 is not None and c1 is not None and r["requests"]:
                        r["proxy_cpu_ms_per_req"] = 1000.0 * (c1 - c0) / r["requests"]
                    with raw.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    lat = r.get("lat_ms") or r.get("total_ms")
                    cpu = r.get("proxy_cpu_ms_per_req")
                    print(
                        f"[rep {rep}] {scenario:8s} {target:14s} n={r['requests']:7d} err={r['errors']} "
                        f"rps={r['rps']:9.1f} p50={lat['p50']:.3f}ms cpu={'-' if cpu is None else f'{cpu:.3f}'}ms "
                        f"load={' '.join(load)}",
                        flush=True,
                    )
                    time.sleep(settle)
    finally:
        fleet.stop()
    table = subprocess.run(
        [sys.executable, str(HERE / "compare_clients.py"), str(raw)], capture_output=True, text=True
    ).stdout
    (results / "table.md").write_text(table)
    print(table)
    print(f"results: {results}")


if __name__ == "__main__":
    main()
