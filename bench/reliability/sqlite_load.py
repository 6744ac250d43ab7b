"""SQLite under the embedded default's real load (app_dev/sqlite_load.py): one process serving
completions with captures at the rate its clients can reach, while rewards are pushed, a
dataset builds and a job trains. Prints the rate, the capture writer's figures and every
"database is locked" seen (answers and logs).

    .venv/bin/python bench/reliability/sqlite_load.py --duration-s 60 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app_dev.sqlite_load import describe, run_sqlite_load  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sqlite-load-"))
    try:
        report = asyncio.run(
            run_sqlite_load(workdir, duration_s=args.duration_s, concurrency=args.concurrency)
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report.as_dict(), indent=2) if args.json else describe(report))
    return 1 if report.locked_answers or report.log_lines_locked else 0


if __name__ == "__main__":
    sys.exit(main())
