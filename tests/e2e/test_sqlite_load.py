"""SQLite, the embedded default, under its real load: one process (uvicorn, in-process worker)
serving completions with captures as fast as 8 clients can send them while the game pushes
rewards, a dataset builds and a job trains. No answer says "database is locked", and the
capture writer keeps up (or counts what it drops). bench/reliability/sqlite_load.py has the
figures of longer runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from app_dev.sqlite_load import describe, run_sqlite_load

pytestmark = pytest.mark.e2e


async def test_sqlite_serves_captures_at_full_rate_while_a_dataset_builds_and_a_job_trains_without_locked_errors(
    tmp_path: Path,
) -> None:
    report = await run_sqlite_load(tmp_path, duration_s=8.0, concurrency=8)

    summary = describe(report)
    assert report.chats_answered > 0, summary
    assert report.locked_answers == 0, summary
    assert report.log_lines_locked == 0, summary
    assert report.other_answers == {}, summary  # every request answered 200
    assert report.dataset_status == "ready", summary
    assert report.job_status is not None, summary  # created and picked up while the load ran
    # the writer kept up, or counted what it could not keep
    assert report.captures_stored + report.captures_dropped == report.chats_answered, summary
    assert report.captures_written == report.captures_stored, summary
