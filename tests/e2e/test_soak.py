"""A short soak of the scaled-out shape (app_dev/soak.py; bench/reliability/soak.py runs the
full one): one API replica and two `training-control worker` processes on a throwaway
Postgres, jobs created through the API (some with an Idempotency-Key sent twice, some
cancelled) and gateway traffic with captures, while three kill -9s hit the workers and the
replica (each restarted), Postgres restarts once and W&B misbehaves. At the end: every job
terminal, none lost, no step POSTed twice (the emulator's counters), one job per key, every
answered completion stored once (and logged once), also those a kill -9ed replica answered
before its writer flushed (the write-ahead spool keeps them), a webhook for every job, and
every kill resumed from."""

from __future__ import annotations

from pathlib import Path

import pytest

from app_dev.soak import SoakConfig, dump, run_soak
from app_dev.throwaway_pg import unavailable_reason
from tests.conftest import IN_CI

pytestmark = pytest.mark.e2e


async def test_kill_9s_a_postgres_restart_and_wandb_faults_lose_nothing_and_post_no_step_twice(
    tmp_path: Path,
) -> None:
    reason = unavailable_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"a throwaway Postgres cannot start in CI: {reason}")
        pytest.skip(f"a throwaway Postgres cannot start here: {reason}")
    config = SoakConfig(
        replicas=1,
        workers=2,
        jobs=6,
        kills=3,
        min_replica_kills=1,
        flush_interval_s=2.0,  # a replica holds seconds of rows in memory when it is killed
        chaos_s=24.0,
        postgres_down_s=2.0,
        pace_s=0.3,
        cancel_every=3,
        timeout_s=240.0,
        seed=11,
    )

    report = await run_soak(config, tmp_path)

    assert report.violations() == [], dump(report)
    assert sum(report.jobs.values()) == report.acknowledged_jobs > 0
    assert len(report.kills) == 3
    assert any(kill["kind"] == "replica" for kill in report.kills)
    assert report.captures_missing_in_killed_buffer == 0  # also in violations(); named for the reader
    assert report.postgres_restarts == 1
    assert report.chats_answered > 0
    assert report.idempotency_keys > 0
