#!/usr/bin/env python3
"""Gateway CPU per request with a rollout running on the alias vs the same alias without one
(bench-only; issue 15). One gateway process, the same run, phases alternated A B B A so drift
and neighbours' load fall on both: wrk (post_capture.lua: a new `metadata.trajectory_id` per
request, so every request takes the sticky hash and is captured) at `bench-agent:production`;
before each rollout phase a rollout of step 2 at share 0.5 is started, after it cancelled.
CPU = utime+stime of the gateway process (/proc) over the completed requests.

Expects upstream.py and the gateway running (rollout_cpu.sh starts both and calls this).

    python rollout_cpu.py --pid 1234 --url http://127.0.0.1:14290 --api-key K --reps 3 --seconds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from pathlib import Path

from soak import cpu_s, wrk  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent
MODEL = "bench-agent:production"


def api(url: str, key: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body or {}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


def phase(args: argparse.Namespace, script: Path) -> tuple[float, int]:
    time.sleep(1.5)  # past the resolver's 1 s cache: this phase resolves what it measures
    c0 = cpu_s(args.pid)
    requests = wrk(args.url + "/v1/chat/completions", script, args.conc, args.seconds, args.api_key, MODEL)
    return 1000.0 * (cpu_s(args.pid) - c0) / max(requests, 1), requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--conc", type=int, default=32)
    args = parser.parse_args()
    script = HERE / "post_capture.lua"
    wrk(args.url + "/v1/chat/completions", script, 8, 3, args.api_key, MODEL)  # warm-up
    results: dict[str, list[float]] = {"alias": [], "rollout": []}
    for rep in range(args.reps):
        for mode in ("alias", "rollout") if rep % 2 == 0 else ("rollout", "alias"):
            rollout_id = None
            if mode == "rollout":
                started = api(
                    args.url,
                    args.api_key,
                    "/v1/models/bench-agent/rollouts",
                    {"alias": "production", "candidate": "step2", "share": 0.5},
                )
                rollout_id = started["id"]
            cpu_ms, requests = phase(args, script)
            if rollout_id is not None:
                api(args.url, args.api_key, f"/v1/models/bench-agent/rollouts/{rollout_id}/cancel")
            results[mode].append(cpu_ms)
            load = Path("/proc/loadavg").read_text().split()[:3]
            print(
                f"rep {rep + 1} {mode:8s} cpu={cpu_ms:.3f} ms/req requests={requests} load={' '.join(load)}",
                flush=True,
            )
    alias, rollout = statistics.median(results["alias"]), statistics.median(results["rollout"])
    summary = {
        "alias_cpu_ms_per_req_median": round(alias, 3),
        "rollout_cpu_ms_per_req_median": round(rollout, 3),
        "ratio": round(rollout / alias, 3),
        "runs": results,
    }
    print("ROLLOUTJSON " + json.dumps(summary), flush=True)
    print(f"rollout / alias CPU per request: {rollout:.3f} / {alias:.3f} ms = {rollout / alias:.3f}")


if __name__ == "__main__":
    main()
