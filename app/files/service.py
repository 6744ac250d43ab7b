"""Uploaded fine-tune files: validate line by line, store the groups as a dataset.

An upload writes its groups in short transactions while it reads (a large file never holds
SQLite's write lock for long); the dataset stays `building`, invisible to jobs, until the
last line is valid. A bad line removes everything written for the file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import IO

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.datasets.models import Dataset, DatasetGroup, DatasetStatus
from app.datasets.snapshot import SnapshotWriter
from app.datasets.sources import FILE
from app.datasets.stats import FROM_FILE, BuildStats
from app.db import utcnow
from app.errors import BadRequest, NotFound
from app.files.jsonl import GroupReader, LineError
from app.files.models import File, FileStatus
from app.ids import new_id
from app.pagination import after_row, created_order, cursor_anchor, fetch_page
from app.trajectories.art_shape import count_turns

PURPOSES = ("fine-tune",)
BATCH_GROUPS = 200


def check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise BadRequest(
            f"purpose {purpose!r} is not supported; this service accepts purpose='fine-tune' "
            "(a JSONL of trajectory groups)",
            param="purpose",
            code="invalid_purpose",
        )


async def upload_file(
    sessionmaker: async_sessionmaker[AsyncSession], stream: IO[bytes], *, filename: str, purpose: str
) -> File:
    """Validate and store a JSONL upload; BadRequest naming the first bad line."""
    check_purpose(purpose)
    started = time.monotonic()
    file_id, dataset_id = new_id("file"), new_id("ds")
    async with sessionmaker() as session:
        session.add(
            Dataset(
                id=dataset_id,
                status=DatasetStatus.BUILDING,
                source=FILE,
                params={"file_id": file_id},
                stats={},
                heartbeat_at=utcnow(),
            )
        )
        await session.commit()
    writer = SnapshotWriter(
        sessionmaker, dataset_id, source=FILE, scorer="", scorer_version="", max_listed_rejections=0
    )
    stats = BuildStats()
    reader = GroupReader(stream)
    no_signal = 0
    try:
        while True:
            batch = await asyncio.to_thread(reader.next_batch, BATCH_GROUPS)
            if not batch:
                break
            for group in batch:
                rewards = [float(t["reward"]) for t in group.trajectories]
                trainable = context_only = with_trainable = 0
                for traj in group.trajectories:
                    turns = count_turns(traj)
                    trainable += turns.trainable
                    context_only += turns.context_only
                    with_trainable += turns.trainable > 0
                stats.rows_read += len(rewards)
                stats.windows += 1
                stats.context_sources[FROM_FILE] += len(rewards)
                if len(rewards) < 2 or max(rewards) == min(rewards):
                    no_signal += 1
                writer.add_group(group.scenario_id, rewards, group.trajectories, trainable)
                stats.add_group(rewards, trainable, context_only, with_trainable)
            await writer.flush()
        reader.check_trainable()
    except LineError as exc:
        await _remove(sessionmaker, dataset_id)
        raise BadRequest(f"invalid JSONL file {filename!r}: {exc}", param="file", code=exc.code) from None
    except BaseException:
        await asyncio.shield(_remove(sessionmaker, dataset_id))
        raise
    stats.duration_s = time.monotonic() - started
    stats.extra["groups_without_signal"] = no_signal
    stats.extra["scorer"] = None
    async with sessionmaker() as session:
        dataset = await session.get(Dataset, dataset_id)
        assert dataset is not None
        dataset.status = DatasetStatus.READY
        dataset.stats = stats.to_dict()
        dataset.group_count = stats.groups_kept
        dataset.trajectory_count = stats.rows_used
        dataset.trainable_turns = stats.trainable_turns
        dataset.finished_at = utcnow()
        file = File(
            id=file_id,
            filename=filename[:255],
            purpose=purpose,
            bytes=reader.bytes,
            status=FileStatus.PROCESSED,
            dataset_id=dataset_id,
            group_count=reader.groups,
            trajectory_count=reader.trajectories,
            trainable_turns=reader.trainable_turns,
        )
        session.add(file)
        await session.commit()
        return file


async def _remove(sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str) -> None:
    async with sessionmaker() as session:
        await session.execute(sa.delete(DatasetGroup).where(DatasetGroup.dataset_id == dataset_id))
        await session.execute(sa.delete(Dataset).where(Dataset.id == dataset_id))
        await session.commit()


async def resolve_training_file(session: AsyncSession, file_or_dataset_id: str) -> Dataset:
    """The dataset a job's `training_file` names: a `ds-…` id, or a `file-…` id (an uploaded
    fine-tune JSONL, stored as a dataset with source="file" when it was uploaded).

    Raises NotFound(param="training_file", code="file_not_found") for an unknown id or a file
    whose dataset is gone. The dataset may not be ready yet: check `status` (DatasetStatus.READY).
    """

    def missing() -> NotFound:
        return NotFound(
            f"no file or dataset with id {file_or_dataset_id!r}", param="training_file", code="file_not_found"
        )

    if file_or_dataset_id.startswith("file-"):
        file = await session.get(File, file_or_dataset_id)
        if file is None or file.dataset_id is None:
            raise missing()
        dataset = await session.get(Dataset, file.dataset_id)
    else:
        dataset = await session.get(Dataset, file_or_dataset_id)
    if dataset is None:
        raise missing()
    return dataset


async def get_file(session: AsyncSession, file_id: str) -> File:
    file = await session.get(File, file_id)
    if file is None:
        raise NotFound(f"no file with id {file_id!r}", param="file_id", code="file_not_found")
    return file


async def list_files(
    session: AsyncSession, *, purpose: str | None, after: str | None, limit: int, order: str
) -> tuple[list[File], bool]:
    query = sa.select(File)
    if purpose is not None:
        query = query.where(File.purpose == purpose)
    newest_first = order == "desc"
    if after is not None:
        anchor = await cursor_anchor(session, File, after, what="file")
        query = query.where(after_row(File, anchor, newest_first=newest_first))
    return await fetch_page(session, query.order_by(*created_order(File, newest_first=newest_first)), limit)


async def delete_file(session: AsyncSession, file_id: str) -> None:
    """Delete the file and the dataset made from it (its groups go with it)."""
    file = await get_file(session, file_id)
    dataset_id = file.dataset_id
    await session.delete(file)
    await session.flush()
    if dataset_id is not None:
        await session.execute(sa.delete(DatasetGroup).where(DatasetGroup.dataset_id == dataset_id))
        await session.execute(sa.delete(Dataset).where(Dataset.id == dataset_id))


async def file_lines(
    sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str | None
) -> AsyncIterator[bytes]:
    """The file's groups as JSONL again (canonical JSON, one group per line), page by page."""
    if dataset_id is None:
        return
    position = 0
    while True:
        async with sessionmaker() as session:
            rows = (
                await session.scalars(
                    sa.select(DatasetGroup)
                    .where(DatasetGroup.dataset_id == dataset_id, DatasetGroup.position >= position)
                    .order_by(DatasetGroup.position)
                    .limit(100)
                )
            ).all()
        if not rows:
            return
        for row in rows:
            yield (
                orjson.dumps({"trajectories": row.trajectories, "metadata": {"scenario_id": row.scenario_id}})
                + b"\n"
            )
        position = rows[-1].position + 1
