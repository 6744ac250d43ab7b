"""The write-ahead spool (app/gateway/spool.py) and the writer's replay of it: rotation,
adoption of a dead process's files only, and replays that store each row once."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.config import Settings
from app.gateway.models import CapturedCompletion
from app.gateway.spool import Spool, adoptable, database_tag, encode
from app.gateway.writer import BatchWriter, WriterMetrics
from app.main import create_app
from tests.conftest import make_settings

TABLE = "captured_completions"


def _row(n: int, trajectory: str | None = "t") -> dict[str, Any]:
    return {
        "id": f"cap-{n}",
        "created_at": dt.datetime.now(dt.UTC),
        "trajectory_id": trajectory,
        "model": "m",
        "upstream_model": "m",
        "messages": [{"role": "user", "content": f"q{n}"}],
        "choice": {"index": 0},
    }


def _files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def _die(spool: Spool) -> None:
    """What a kill -9 does to a spool: its fds close (locks released), its files stay."""
    for segment in [*spool.rotated, spool.current]:
        if segment is not None and segment.fd >= 0:
            os.close(segment.fd)
            segment.fd = -1


def test_a_spool_file_rotates_after_its_row_limit_and_is_deleted_once_settled(tmp_path: Path) -> None:
    spool = Spool(tmp_path, TABLE, rotate_rows=2, rotate_s=60)
    spool.open()
    first = spool.append(encode(_row(1)))
    again = spool.append(encode(_row(2)))
    third = spool.append(encode(_row(3)))
    assert first is not None
    assert third is not None
    assert again is first
    assert third is not first
    assert first.rotated
    assert first.rows == 2
    assert len(_files(tmp_path)) == 2
    assert spool.tick() == []
    assert len(_files(tmp_path)) == 2  # rows not yet committed: the file stays
    first.settled = 2
    assert spool.tick() == []
    assert _files(tmp_path) == [third.path.name]
    spool.close()


def test_a_spool_file_rotates_after_its_age_and_empty_files_do_not(tmp_path: Path) -> None:
    spool = Spool(tmp_path, TABLE, rotate_rows=100, rotate_s=0.01)
    spool.open()
    empty = spool.current
    time.sleep(0.02)
    spool.tick()
    assert spool.current is empty  # nothing to rotate
    segment = spool.append(encode(_row(1)))
    time.sleep(0.02)
    spool.tick()
    assert segment is not None
    assert segment.rotated
    assert spool.current is not segment


def test_a_file_is_spooled_one_json_line_per_row(tmp_path: Path) -> None:
    spool = Spool(tmp_path, TABLE)
    spool.open()
    spool.append(encode(_row(1)))
    spool.append(encode(_row(2)))
    assert spool.current is not None
    lines = spool.current.path.read_bytes().splitlines()
    assert [line.count(b'"id":"cap-') for line in lines] == [1, 1]


def test_only_files_whose_lock_is_free_and_of_the_same_database_are_adopted(tmp_path: Path) -> None:
    live = Spool(tmp_path, TABLE)
    live.open()
    live.append(encode(_row(1)))
    dead = Spool(tmp_path, TABLE)
    dead.open()
    dead.append(encode(_row(2)))
    assert dead.current is not None
    dead_path = dead.current.path
    _die(dead)
    other_table = Spool(tmp_path, "gateway_requests")
    other_table.open()
    _die(other_table)
    other_database = Spool(tmp_path, TABLE, database=database_tag("sqlite+aiosqlite:///./other.db"))
    other_database.open()
    other_database.append(encode(_row(3)))
    _die(other_database)
    orphan = tmp_path / f".{TABLE}.default.host-1-2-1.jsonl.tmp"  # killed between create and rename
    orphan.touch()

    adopted = list(adoptable(tmp_path, TABLE, own=set()))

    assert [a.path for a in adopted] == [dead_path]
    assert not orphan.exists()
    for a in adopted:
        a.close(delete=False)
    live.close()


def test_a_spooled_row_is_readable_after_its_process_died(tmp_path: Path) -> None:
    spool = Spool(tmp_path, TABLE)
    spool.open()
    spool.append(encode(_row(7)))
    _die(spool)
    (adopted,) = adoptable(tmp_path, TABLE, own=set())
    assert b'"cap-7"' in b"".join(adopted.lines())
    adopted.close(delete=True)
    assert _files(tmp_path) == []


# -------------------------------------------------------------------- with a database


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    created = create_async_engine(settings.database_url)
    yield created
    await created.dispose()


def _writer(engine: AsyncEngine, spool: Spool | None, *, capacity: int = 100) -> BatchWriter:
    table = CapturedCompletion.__table__
    assert isinstance(table, sa.Table)
    return BatchWriter(
        table,
        engine,
        WriterMetrics(CollectorRegistry()),
        capacity=capacity,
        batch_size=50,
        interval_s=60,
        spool=spool,
    )


async def _stored(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return sorted((await conn.scalars(sa.select(CapturedCompletion.id))).all())


async def test_replaying_a_dead_process_file_stores_each_row_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    spool = Spool(tmp_path, TABLE)
    spool.open()
    before = _writer(engine, spool)
    for n in (1, 2, 3):
        before.put(_row(n))
    await before.flush()  # committed, but the process dies before its file is deleted
    before.put(_row(4))  # answered, never flushed
    _die(spool)

    after_spool = Spool(tmp_path, TABLE)
    after_spool.open()
    after = _writer(engine, after_spool)
    assert await after.adopt() == 4
    assert await after.adopt() == 0  # the file is gone

    assert await _stored(engine) == ["cap-1", "cap-2", "cap-3", "cap-4"]
    assert after_spool.current is not None
    assert _files(tmp_path) == [after_spool.current.path.name]  # only the live process's file
    await after.stop()
    assert _files(tmp_path) == []


async def test_rows_the_full_buffer_dropped_land_from_the_spool(engine: AsyncEngine, tmp_path: Path) -> None:
    spool = Spool(tmp_path, TABLE)
    spool.open()
    writer = _writer(engine, spool, capacity=1)
    assert writer.put(_row(1))
    assert not writer.put(_row(2))  # counted as dropped from memory
    assert not writer.put(_row(3))
    await writer.flush()
    assert await _stored(engine) == ["cap-1"]

    spool.rotate()
    await writer.maintain_spool()

    assert await _stored(engine) == ["cap-1", "cap-2", "cap-3"]
    assert spool.rotated == []
    await writer.stop()
    assert _files(tmp_path) == []


async def test_a_replayed_row_the_database_rejects_is_dropped_and_the_rest_stored(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    spool = Spool(tmp_path, TABLE)
    spool.open()
    spool.append(encode(_row(1)))
    spool.append(encode(_row(2, trajectory=None)))  # NOT NULL violation: rejected for good
    spool.append(encode(_row(3)))
    assert spool.current is not None
    spool.current.path.open("ab").write(b'{"id": "cap-torn", "trajec')  # a torn last line
    _die(spool)

    writer = _writer(engine, None)
    writer.spool = Spool(tmp_path, TABLE)
    writer.spool.open()
    await writer.adopt()

    assert await _stored(engine) == ["cap-1", "cap-3"]
    assert writer._dropped_rejected._value.get() == 2
    await writer.stop()
    assert _files(tmp_path) == []


async def test_a_spool_directory_that_cannot_be_written_stops_the_start_naming_the_setting(
    settings: Settings, tmp_path: Path
) -> None:
    occupied = tmp_path / "a-file"
    occupied.write_text("")
    app = create_app(make_settings(settings.database_url, inference={"spool_dir": str(occupied / "spool")}))
    with pytest.raises(RuntimeError, match="INFERENCE__SPOOL_DIR"):
        async with LifespanManager(app):
            pass


async def test_a_row_the_spool_cannot_write_is_counted_and_still_queued(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    spool = Spool(tmp_path, TABLE)
    spool.open()
    writer = _writer(engine, spool)
    assert spool.current is not None
    os.close(spool.current.fd)  # every write now fails (EBADF), as a full disk would
    spool.current.fd = os.open(os.devnull, os.O_RDONLY)

    assert writer.put(_row(1))
    await writer.flush()

    assert writer._spool_write_errors._value.get() == 1
    assert await _stored(engine) == ["cap-1"]
    await writer.stop()
