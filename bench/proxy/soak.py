#!/usr/bin/env python3
"""Memory soak (bench-only): the gateway's RSS before and after 200k requests.

Expects the upstream (upstream.py) and the gateway to be running (bench_soak.sh starts both).
Warms up first (pools, caches, lazy imports, allocator arenas), samples VmRSS, then sends
`--total` requests in a mix: plain non-streaming (wrk), captured non-streaming (wrk with
metadata.trajectory_id, so captures and the request log are written), and streaming
(loadgen.py), sampling RSS after every phase. Loopback only; every run is bounded.

    python soak.py --pid 1234 --url http://127.0.0.1:14200 --api-key K --model bench-agent:production
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, script: Path, conc: int, seconds: int, key: str, model: str) -> int:
    env = {"BENCH_API_KEY": key, "BENCH_MODEL": model, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conc}", f"-d{seconds}s", "--timeout=30s", "-s", str(script), url],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 60,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("WRKJSON "))
    result = json.loads(line[8:])
    errors = sum(result[k] for k in ("err_status", "err_connect", "err_read", "err_timeout"))
    if errors:
        print(f"  ! {errors} errors in {script}", flush=True)
    return int(result["requests"])


def stream(harness: Path, url: str, conc: int, count: int, key: str, model: str) -> int:
    out = subprocess.run(
        [
            sys.executable,
            str(harness / "loadgen.py"),
            "--url",
            url,
            "--stream",
            "-c",
            str(conc),
            "-d",
            "600",
            "-n",
            str(count),
            "--warmup",
            "0",
            "--api-key",
            key,
            "--model",
            model,
        ],
        capture_output=True,
        text=True,
        timeout=700,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("LGJSON "))
    return int(json.loads(line[7:])["requests"])


def phase(name: str, url: str, args: argparse.Namespace, target: int) -> int:
    done = 0
    while done < target:
        if name == "stream":
            done += stream(args.harness, url, 32, min(target - done, 20_000), args.api_key, args.model)
        else:
            script = args.harness / "post.lua" if name == "plain" else HERE / "post_capture.lua"
            done += wrk(url, script, 32, 10, args.api_key, args.model)
    return done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--harness", type=Path, required=True, help="shared/bench/proxy (loadgen.py, post.lua)")
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--url", required=True, help="gateway base URL (loopback)")
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--model", default="bench-agent:production")
    ap.add_argument("--total", type=int, default=200_000)
    ap.add_argument("--warmup", type=int, default=20_000)
    args = ap.parse_args()
    if not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        sys.exit("loopback only")
    url = args.url.rstrip("/") + "/v1/chat/completions"

    t0 = time.time()
    phase("plain", url, args, args.warmup // 2)
    phase("captured", url, args, args.warmup // 4)
    phase("stream", url, args, args.warmup // 4)
    time.sleep(2)  # let the writers flush
    base = rss_mb(args.pid)
    print(f"after warm-up: RSS {base:.1f} MB", flush=True)

    plan = [
        ("plain", int(args.total * 0.6)),
        ("captured", int(args.total * 0.25)),
        ("stream", int(args.total * 0.15)),
    ]
    sent = 0
    samples = [("warm", 0, base)]
    cpu_per_request = {}
    for name, target in plan:
        cpu0 = cpu_s(args.pid)
        done = phase(name, url, args, target)
        time.sleep(2)  # the writers' last flush of this phase is counted in it
        cpu_per_request[name] = 1000 * (cpu_s(args.pid) - cpu0) / done
        sent += done
        samples.append((name, sent, rss_mb(args.pid)))
        print(
            f"after {name:8s}: {sent:7d} requests, RSS {samples[-1][2]:.1f} MB, "
            f"{cpu_per_request[name]:.3f} ms CPU/request in this phase (c=32)",
            flush=True,
        )
    growth = samples[-1][2] - base
    print(
        f"RSS growth over {sent} requests: {growth:+.1f} MB (peak {max(s[2] for s in samples):.1f} MB) "
        f"in {time.time() - t0:.0f} s"
    )
    print(
        "SOAKJSON "
        + json.dumps(
            {
                "requests": sent,
                "rss_start_mb": base,
                "rss_end_mb": samples[-1][2],
                "growth_mb": growth,
                "samples": samples,
                "cpu_ms_per_request": cpu_per_request,
            }
        )
    )


if __name__ == "__main__":
    main()
