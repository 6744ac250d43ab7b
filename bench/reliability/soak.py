"""The soak: API replicas and workers on one (throwaway) Postgres under kill -9, a Postgres
restart and W&B faults, with jobs and gateway traffic; prints the invariants and the figures
(app_dev/soak.py does the work; bench/reliability/README.md has the results).

    .venv/bin/python bench/reliability/soak.py                 # 2 replicas, 3 workers, 40 jobs, 20 kills
    .venv/bin/python bench/reliability/soak.py --jobs 10 --kills 4 --chaos-s 60 --json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app_dev.soak import SoakConfig, dump, run_soak  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = SoakConfig()
    for name, value in defaults.__dict__.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in {"1", "true", "yes"}, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    args = parser.parse_args()
    config = SoakConfig(**{k: getattr(args, k) for k in defaults.__dict__})
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        report = asyncio.run(run_soak(config, workdir))
    finally:
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(dump(report))
    else:
        print(f"duration {report.duration_s}s, load average {os.getloadavg()[0]:.2f}")
        print(f"jobs {report.jobs} (acknowledged {report.acknowledged_jobs})")
        kinds = [k["kind"] for k in report.kills]
        print(
            f"kills {len(kinds)} (workers {kinds.count('worker')}, replicas {kinds.count('replica')}), "
            f"time to resume p50 {report.resume_p50_s}s max {report.resume_max_s}s "
            f"{report.resume_by_kind}; "
            f"postgres restarts {report.postgres_restarts}"
        )
        print(f"W&B faults fired {report.wandb_faults_fired}")
        print(
            f"chats answered {report.chats_answered}, stored {report.captures_stored}, duplicated "
            f"{report.captures_duplicated}, missing {report.captures_missing}, lost in a killed "
            f"replica's buffer {report.captures_missing_in_killed_buffer}; failed {report.chats_failed}"
        )
        print(f"completions while Postgres was down (status → count) {report.chats_during_outage}")
        print(f"Idempotency-Keys {report.idempotency_keys}, webhooks delivered {report.webhook_deliveries}")
        print(f"API 5xx answers seen (retried) {report.api_5xx}")
        for line in report.captures_missing_detail:
            print("missing capture:", line)
    problems = report.violations()
    for problem in problems:
        print("VIOLATION:", problem)
    if args.keep_logs:
        print("logs:", report.logs)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
