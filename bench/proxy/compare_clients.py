#!/usr/bin/env python3
"""The tables of one bench_clients.py run: every target per scenario, ratios to LiteLLM, the bar.

python bench/proxy/compare_clients.py RESULTS/raw.jsonl [--chosen aiohttp]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

TITLES = {
    "ns_c1": "non-stream c=1",
    "ns_c32": "non-stream c=32",
    "ns_c128": "non-stream c=128",
    "st_c1": "stream 20 chunks c=1",
    "st_c32": "stream 20 chunks c=32",
}
NON_STREAM = ("ns_c1", "ns_c32", "ns_c128")
STREAM = ("st_c1", "st_c32")


def fmt(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    return " / ".join(f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}" for v in values)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw", type=Path)
    ap.add_argument("--chosen", default="aiohttp")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.raw.read_text().splitlines() if line.strip()]
    runs = [r for r in rows if not r.get("meta")]
    meta = next((r for r in rows if r.get("meta")), {})
    targets = [t for t in meta.get("targets", []) if t != "direct"]
    reps = sorted({r["rep"] for r in runs})
    get = {(r["rep"], r["scenario"], r["target"]): r for r in runs}

    def series(scenario: str, target: str, field: str) -> list[float]:
        out = []
        for rep in reps:
            r = get.get((rep, scenario, target))
            if r is None:
                continue
            lat = r.get("lat_ms") or r["total_ms"]
            if field == "cpu" and r.get("proxy_cpu_ms_per_req") is not None:
                out.append(r["proxy_cpu_ms_per_req"])
            elif field == "rps":
                out.append(r["rps"])
            elif field == "p50":
                out.append(lat["p50"])
            elif field == "delta":
                d = get.get((rep, scenario, "direct"))
                if d is not None:
                    out.append(lat["p50"] - (d.get("lat_ms") or d["total_ms"])["p50"])
        return out

    loads = [float(r["loadavg"][0]) for r in runs if r.get("loadavg")]
    print(
        f"Run started {meta.get('started')}, reps {len(reps)}, {meta.get('dur')} s per run; "
        f"1-min load average during the run {min(loads):.2f}–{max(loads):.2f}.\n"
    )
    print("| scenario | target | CPU ms/req | req/s | p50 ms | Δp50 vs direct ms | errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    scenarios = [s for s in TITLES if any(r["scenario"] == s for r in runs)]
    for s in scenarios:
        for t in ["direct", *targets]:
            if not series(s, t, "rps"):
                continue
            errors = sum(get[(rep, s, t)]["errors"] for rep in reps if (rep, s, t) in get)
            print(
                f"| {TITLES[s]} | {t} | {fmt(series(s, t, 'cpu'), 3)} | {fmt(series(s, t, 'rps'), 0)} | "
                f"{fmt(series(s, t, 'p50'))} | {fmt(series(s, t, 'delta'), 3)} | {errors} |"
            )

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    if "litellm" in targets:
        print("\nCPU per request, LiteLLM ÷ target (median of reps; higher is better):\n")
        others = [t for t in targets if t != "litellm"]
        print("| scenario | " + " | ".join(others) + " |")
        print("|---|" + "---:|" * len(others))
        for s in scenarios:
            ll = med(series(s, "litellm", "cpu"))
            print(
                f"| {TITLES[s]} | "
                + " | ".join(f"{ll / med(series(s, t, 'cpu')):.1f}x" for t in others)
                + " |"
            )

    print("\nThe bar (every rep):\n")
    print(
        "| target | ns CPU ≤ 0.8 ms | ns ≥ 12x < LiteLLM | stream CPU ≤ 1.0 ms | stream ≥ 20x < LiteLLM | Δp50 c=1 < 1 ms |"
    )
    print("|---|---|---|---|---|---|")
    for t in targets:
        if t == "litellm":
            continue
        ns_cpu = [v for s in NON_STREAM for v in series(s, t, "cpu")]
        st_cpu = [v for s in STREAM for v in series(s, t, "cpu")]

        def ratio_ok(group: tuple[str, ...], factor: float, target: str = t) -> str:
            if "litellm" not in targets:
                return "–"
            ok = all(
                med(series(s, "litellm", "cpu")) / max(series(s, target, "cpu")) >= factor
                for s in group
                if series(s, target, "cpu")
            )
            return "PASS" if ok else "FAIL"

        delta = series("ns_c1", t, "delta")
        cells = [
            ("PASS" if ns_cpu and max(ns_cpu) <= 0.8 else "FAIL") + f" (max {max(ns_cpu, default=0):.3f})",
            ratio_ok(NON_STREAM, 12),
            ("PASS" if st_cpu and max(st_cpu) <= 1.0 else "FAIL") + f" (max {max(st_cpu, default=0):.3f})",
            ratio_ok(STREAM, 20),
            ("PASS" if delta and max(delta) < 1.0 else "FAIL") + f" (max {max(delta, default=0):.3f})",
        ]
        marker = " (chosen)" if t == args.chosen else ""
        print(f"| {t}{marker} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
