#!/usr/bin/env python3
"""Side-by-side table of the gateway and LiteLLM from the harness's raw.jsonl files (bench-only).

Per scenario and target: every rep's req/s, p50/p99 (total for streams), Δp50 against the direct
run of the same rep and window, and the proxy's CPU ms per request; then the ratios and the
issue's targets.

    python compare.py --gateway RESULTS/gateway/raw.jsonl --litellm RESULTS/litellm/raw.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

SCENARIOS = ["ns_c1", "ns_c32", "ns_c128", "st_c1", "st_c32"]
TITLES = {
    "ns_c1": "non-stream c=1",
    "ns_c32": "non-stream c=32",
    "ns_c128": "non-stream c=128",
    "st_c1": "stream 20 chunks c=1",
    "st_c32": "stream 20 chunks c=32",
}


def load(path: Path) -> tuple[str, dict[tuple[int, str, str], dict]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    label = next(r["label"] for r in rows if r.get("meta"))
    runs = {(r["rep"], r["scenario"], r["target"]): r for r in rows if not r.get("meta")}
    return label, runs


def latency(run: dict) -> dict:
    return run.get("lat_ms") or run["total_ms"]


def summary(label: str, runs: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for scenario in SCENARIOS:
        reps = sorted({rep for rep, s, t in runs if s == scenario and t == label})
        if not reps:
            continue
        rps, p50, p99, cpu, delta = [], [], [], [], []
        for rep in reps:
            proxy, direct = runs[(rep, scenario, label)], runs.get((rep, scenario, "direct"))
            rps.append(proxy["rps"])
            p50.append(latency(proxy)["p50"])
            p99.append(latency(proxy)["p99"])
            if proxy.get("proxy_cpu_ms_per_req") is not None:
                cpu.append(proxy["proxy_cpu_ms_per_req"])
            if direct:
                delta.append(latency(proxy)["p50"] - latency(direct)["p50"])
        out[scenario] = {
            "rps": rps,
            "p50": p50,
            "p99": p99,
            "cpu": cpu,
            "delta": delta,
            "errors": sum(runs[(rep, scenario, label)]["errors"] for rep in reps),
        }
    return out


def fmt(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    return " / ".join(f"{v:,.{digits}f}" if v < 1000 else f"{v:,.0f}" for v in values)


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", type=Path)
    ap.add_argument("--litellm", type=Path)
    args = ap.parse_args()
    tables = {}
    for name, path in (("gateway", args.gateway), ("litellm", args.litellm)):
        if path is not None:
            label, runs = load(path)
            tables[name] = summary(label, runs)

    print("| scenario | proxy | req/s (reps) | p50 ms | p99 ms | Δp50 vs direct ms | CPU ms/req | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for scenario in SCENARIOS:
        for name in ("gateway", "litellm"):
            s = tables.get(name, {}).get(scenario)
            if s is None:
                continue
            print(
                f"| {TITLES[scenario]} | {name} | {fmt(s['rps'], 1)} | {fmt(s['p50'])} | {fmt(s['p99'])} | "
                f"{fmt(s['delta'], 3)} | {fmt(s['cpu'], 3)} | {s['errors']} |"
            )
    if "gateway" in tables and "litellm" in tables:
        print()
        print(
            "| scenario | CPU ms/req LiteLLM ÷ gateway | req/s gateway ÷ LiteLLM | Δp50 LiteLLM ÷ gateway |"
        )
        print("|---|---:|---:|---:|")
        for scenario in SCENARIOS:
            g, ll = tables["gateway"].get(scenario), tables["litellm"].get(scenario)
            if not g or not ll:
                continue
            cpu = (med(ll["cpu"]) or 0) / (med(g["cpu"]) or float("nan"))
            rps = (med(g["rps"]) or 0) / (med(ll["rps"]) or float("nan"))
            delta = (med(ll["delta"]) or 0) / (med(g["delta"]) or float("nan"))
            print(f"| {TITLES[scenario]} | {cpu:.1f}x | {rps:.1f}x | {delta:.1f}x |")
    if "gateway" in tables:
        g = tables["gateway"]
        checks = [
            (
                "non-stream CPU ≤ 1.2 ms/req (every rep, every concurrency)",
                all(v <= 1.2 for s in ("ns_c1", "ns_c32", "ns_c128") for v in g.get(s, {}).get("cpu", [99])),
            ),
            ("≥ 700 req/s at c=32 (every rep)", all(v >= 700 for v in g.get("ns_c32", {}).get("rps", [0]))),
            ("≥ 700 req/s at c=128 (every rep)", all(v >= 700 for v in g.get("ns_c128", {}).get("rps", [0]))),
            (
                "stream CPU ≤ 2.5 ms/req (every rep)",
                all(v <= 2.5 for s in ("st_c1", "st_c32") for v in g.get(s, {}).get("cpu", [99])),
            ),
            (
                "overhead p50 at c=1 < 1 ms (Δp50, every rep)",
                all(v < 1.0 for v in g.get("ns_c1", {}).get("delta", [99])),
            ),
        ]
        print()
        for text, ok in checks:
            print(f"- {'PASS' if ok else 'FAIL'}: {text}")


if __name__ == "__main__":
    main()
