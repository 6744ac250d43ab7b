"""The long fuzz: every operation of the OpenAPI schema with many examples (valid and invalid
input), then schemathesis's stateful run over the links it infers, against the service
(uvicorn, lifespan on) on SQLite and on a Postgres database (tests/fixtures/fuzzing.py does
the work; tests/e2e/test_fuzz.py is the short run in the suite).

    .venv/bin/python bench/reliability/fuzz.py --max-examples 200 --backend sqlite
    .venv/bin/python bench/reliability/fuzz.py --max-examples 200 --backend postgres
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import schemathesis  # noqa: E402

from app import migrations  # noqa: E402
from app_dev.emulator import EmulatorConfig, EmulatorServer, EmulatorState  # noqa: E402
from tests.conftest import create_pg_database, drop_pg_database, make_settings  # noqa: E402
from tests.fixtures.babylon import create_babylon_db  # noqa: E402
from tests.fixtures.fuzzing import (  # noqa: E402
    AUTH,
    fuzz_operations,
    fuzz_settings,
    run_stateful,
    serve_in_thread,
)

WANDB_KEY = "fuzz-wandb-" + "w" * 24


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--max-examples", type=int, default=200)
    parser.add_argument("--stateful-examples", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None, help="fixed seed (default: random)")
    args = parser.parse_args()
    if args.backend == "sqlite":
        db_url = f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='fuzz-')}/fuzz.db"
    else:
        db_url = create_pg_database("reliability_fuzz")
    game = create_babylon_db(generate=False)
    emulator = EmulatorServer(EmulatorState(EmulatorConfig(api_key=WANDB_KEY))).start()
    failures = 0
    try:
        migrations.upgrade(db_url)
        settings = make_settings(
            db_url, babylon_database_url=game, **fuzz_settings(emulator.base_url, WANDB_KEY)
        )
        with serve_in_thread(settings) as served:
            schema = schemathesis.openapi.from_url(f"{served.base_url}/openapi.json", headers=AUTH)
            began = time.monotonic()
            report = fuzz_operations(schema, served.base_url, max_examples=args.max_examples, seed=args.seed)
            took = time.monotonic() - began
            print(
                f"{args.backend}: {len(report.operations)} operations, {report.cases} cases in {took:.0f}s, "
                f"{len(report.failures)} failing; load average {os.getloadavg()[0]:.2f}"
            )
            for label, text in report.failures.items():
                print(f"\n{label}:\n{text}")
            for slow in report.slow[:10]:
                print("slow:", slow)
            outcome = run_stateful(schema, served.base_url, args.stateful_examples, seed=args.seed)
            print(f"stateful: {outcome or 'passed'} ({args.stateful_examples} sequences)")
            failures = len(report.failures) + bool(outcome)
    finally:
        emulator.stop()
        drop_pg_database(game)
        if args.backend == "postgres":
            drop_pg_database(db_url)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
