#!/usr/bin/env python3
"""The pipeline benchmark: our dataset build against the game's own approach and the COPY floor,
interleaved in one run so that they share the machine's state.

    .venv/bin/python bench/pipeline/run_bench.py --db babylon_bench_100k --db babylon_bench_1m [--reps 3]
    .venv/bin/python bench/pipeline/run_bench.py --summarize          # results/summary.md from runs.jsonl

Per database: one untimed COPY (warms the page cache), then per rep every variant once, each a
fresh process under /usr/bin/time (wall and peak RSS of the whole process). References, from
../../../shared/bench/pipeline/: `anchor.py` (Babylon's babylon_trainer.py approach) and
`limits.py copy` (COPY of "stepsJson" to a null sink: the floor). One JSON line per run goes to
results/runs.jsonl, with the load average when it started (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED = Path(os.environ.get("TC_SHARED_DIR", ROOT.parent / "shared")) / "bench" / "pipeline"
PY = os.environ.get("BENCH_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
RESULTS = HERE / "results"

BUILD = [str(HERE / "build.py")]
VARIANTS: dict[str, list[str]] = {
    "anchor": [str(SHARED / "anchor.py")],
    "copy": [str(SHARED / "limits.py"), "copy"],
    # our build with the anchor's formula (score_locally), everything else default
    "build": [*BUILD, "--scorer", "babylon_local"],
    # the default scorer (the game's RULER heuristic, per trajectory, with market outcomes)
    "build-ruler": [*BUILD, "--scorer", "babylon_ruler"],
    # every agent of a window in a group (not one group per window): ~10x the snapshot
    "build-all-agents": [*BUILD, "--scorer", "babylon_local", "--max-groups-per-window", "1000000"],
    # the service DB on Postgres instead of SQLite
    "build-pg": [*BUILD, "--scorer", "babylon_local", "--service-db", "postgres"],
    # every row's score persisted (not only the dataset's)
    "build-scores-all": [*BUILD, "--scorer", "babylon_local", "--persist-scores", "all"],
}
DEFAULT_VARIANTS = "anchor,copy,build,build-ruler,build-all-agents,build-pg"


def run(cmd: list[str], dsn: str) -> dict[str, Any]:
    full = ["/usr/bin/time", "-f", "TIME %e %M", PY, *cmd, "--dsn", dsn]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(full, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(full)}\n{p.stdout}\n{p.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    t = [line for line in p.stderr.splitlines() if line.startswith("TIME ")][-1].split()
    out["time_elapsed_s"] = float(t[1])
    out["time_maxrss_kb"] = int(t[2])
    return out


def bench(args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    variants = args.variants.split(",")
    for db in args.db:
        dsn = f"{args.dsn_base}/{db}"
        print(f"== {db}", file=sys.stderr, flush=True)
        run(VARIANTS["copy"], dsn)  # warm-up, not recorded
        for rep in range(1, args.reps + 1):
            for variant in variants:
                load = os.getloadavg()[0]
                out = run(VARIANTS[variant], dsn)
                out.update(
                    {
                        "db": db,
                        "rep": rep,
                        "bench_variant": variant,
                        "loadavg_1m_before": round(load, 2),
                        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                )
                with (RESULTS / "runs.jsonl").open("a") as f:
                    f.write(json.dumps(out) + "\n")
                rows = out.get("rows") or out.get("rows_fetched")
                print(
                    f"  rep {rep} {variant:18s} wall {out['wall_s']:6.2f}s rows {rows} "
                    f"rss {out['time_maxrss_kb'] / 1024:5.0f} MiB load {load:.1f}",
                    file=sys.stderr,
                    flush=True,
                )


def _mmm(values: list[float], fmt: str) -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def summarize() -> str:
    runs = [json.loads(line) for line in (RESULTS / "runs.jsonl").read_text().splitlines() if line.strip()]
    lines = []
    for db in dict.fromkeys(r["db"] for r in runs):
        mine = [r for r in runs if r["db"] == db]
        table_rows = next((r["rows"] for r in mine if r["bench_variant"] == "build"), None)
        med: dict[str, float] = {}
        for variant in dict.fromkeys(r["bench_variant"] for r in mine):
            rs = [r for r in mine if r["bench_variant"] == variant]
            # trajectories/s over the whole table (the anchor skips empty rows: count them all)
            med[variant] = statistics.median(
                r["rows"] if "rows" in r else r["rows_fetched"] for r in rs
            ) / statistics.median(r["wall_s"] for r in rs)
        lines.append(f"### {db}\n")
        lines.append(
            "| variant | runs | wall s (min / med / max) | trajectories/s (median) | × anchor | × COPY floor "
            "| peak RSS MiB (min / med / max) | client CPU s (median) | load avg (min / max) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for variant in dict.fromkeys(r["bench_variant"] for r in mine):
            rs = [r for r in mine if r["bench_variant"] == variant]
            walls = [r["wall_s"] for r in rs]
            rss = [r["time_maxrss_kb"] / 1024 for r in rs]
            loads = [r["loadavg_1m_before"] for r in rs]
            rate = med[variant]
            vs_anchor = f"{rate / med['anchor']:.2f}" if "anchor" in med else "–"
            vs_copy = f"{rate / med['copy']:.2f}" if "copy" in med else "–"
            cpu = [r["cpu_s"] for r in rs if "cpu_s" in r]
            cpu_text = f"{statistics.median(cpu):.2f}" if cpu else "–"
            lines.append(
                f"| {variant} | {len(rs)} | {_mmm(walls, '{:.2f}')} | {rate:,.0f} | {vs_anchor} | {vs_copy} "
                f"| {_mmm(rss, '{:.0f}')} | {cpu_text} | {min(loads):.1f} / {max(loads):.1f} |"
            )
        if table_rows is not None:
            lines.append(f"\n{table_rows:,} rows read per build (the anchor skips the empty ones).\n")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--db", action="append", default=[])
    p.add_argument("--dsn-base", default=os.environ.get("DSN_BASE", "postgresql://postgres@127.0.0.1:5432"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--summarize", action="store_true")
    args = p.parse_args()
    if args.summarize:
        text = summarize()
        (RESULTS / "summary.md").write_text(text + "\n")
        print(text)
        return
    if not args.db:
        p.error("--db is required (or --summarize)")
    bench(args)


if __name__ == "__main__":
    main()
