"""Datasets: create, build, read. The interface other features rely on:

- `list_group_rows(session, dataset_id, start=, limit=) -> [DatasetGroup]` (by position)
- `create_dataset(session, settings, params) -> Dataset` (status "queued"; flushes)
- `build_dataset(sessionmaker, settings, dataset_id) -> Dataset` (run by the worker)

Every dataset is built by a worker: creating one stages a `dataset_build` work item in the same
transaction (app/worker/items.py), which any worker claims with a lease; a build whose worker
died is started over by the next one (`build_dataset` discards the partial snapshot first).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.datasets.models import Dataset, DatasetGroup, DatasetRejection, DatasetStatus
from app.datasets.schemas import DatasetCreate
from app.datasets.snapshot import SnapshotWriter
from app.datasets.sources import FILE, DatasetBuild, TrajectorySource, get_source
from app.datasets.stats import BuildStats
from app.db import utcnow
from app.errors import AppError, BadRequest, Conflict, NotFound, StoredError, stored_error
from app.ids import new_id
from app.pagination import created_page
from app.queue.items import enqueue
from app.queue.models import WorkKind

logger = logging.getLogger(__name__)


async def get_dataset(session: AsyncSession, dataset_id: str) -> Dataset:
    dataset = await session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset with id {dataset_id!r}", param="dataset_id", code="dataset_not_found")
    return dataset


async def list_group_rows(
    session: AsyncSession, dataset_id: str, *, start: int = 0, limit: int | None = None
) -> list[DatasetGroup]:
    """A dataset's groups with position >= start, ordered by position (at most `limit`).

    Each row's `trajectories` are `art.Trajectory(...).model_dump(mode="json")` dicts; rebuild
    ART objects with `art.Trajectory.model_validate(t)` and `Choice.model_validate(entry)` for
    entries that have a "message" (art-serverless.md §7.6).
    """
    query = (
        sa.select(DatasetGroup)
        .where(DatasetGroup.dataset_id == dataset_id, DatasetGroup.position >= start)
        .order_by(DatasetGroup.position)
    )
    if limit is not None:
        query = query.limit(limit)
    return list((await session.scalars(query)).all())


async def create_dataset(session: AsyncSession, settings: Settings, params: DatasetCreate) -> Dataset:
    """A queued dataset row for these parameters, validated by its source (configured, scorer
    known), and its build's work item: a worker builds it once the caller commits."""
    source = get_source(params.source)
    stored = {**params.model_dump(mode="json"), **source.prepare(settings, params)}
    return await _queue(session, params.source, stored)


async def queue_upload_dataset(session: AsyncSession, file_id: str) -> Dataset:
    """The dataset (source="file") an uploaded file's groups become, queued for a worker."""
    return await _queue(session, FILE, {"file_id": file_id})


async def _queue(session: AsyncSession, source: str, params: dict[str, Any]) -> Dataset:
    dataset = Dataset(id=new_id("ds"), status=DatasetStatus.QUEUED, source=source, params=params, stats={})
    session.add(dataset)
    await session.flush()
    enqueue(session, WorkKind.DATASET_BUILD, dataset.id)
    await session.flush()
    return dataset


def parse_params(params: DatasetCreate | Mapping[str, Any]) -> DatasetCreate:
    """DatasetCreate from a dict too; an invalid dict is a 400 naming the field."""
    if isinstance(params, DatasetCreate):
        return params
    try:
        return DatasetCreate.model_validate(dict(params))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or None
        raise BadRequest(
            f"invalid dataset parameters: {where or 'body'}: {first.get('msg')}", param=where
        ) from None


async def _start(sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str) -> Dataset | None:
    """Move a queued dataset to building, or start a build over whose worker died (its partial
    snapshot is removed); None if it is already ready or failed."""
    async with sessionmaker() as session:
        dataset = await get_dataset(session, dataset_id)
        if dataset.status not in (DatasetStatus.QUEUED, DatasetStatus.BUILDING):
            return None
        restart = dataset.status == DatasetStatus.BUILDING
        if restart:
            await session.execute(sa.delete(DatasetGroup).where(DatasetGroup.dataset_id == dataset_id))
            await session.execute(
                sa.delete(DatasetRejection).where(DatasetRejection.dataset_id == dataset_id)
            )
            logger.warning("datasets.build_restarted dataset_id=%s", dataset_id)
        dataset.status = DatasetStatus.BUILDING
        dataset.heartbeat_at = utcnow()
        dataset.stats = {}
        await session.commit()
        return dataset


async def _finish(
    sessionmaker: async_sessionmaker[AsyncSession],
    dataset_id: str,
    *,
    stats: BuildStats | None = None,
    error: StoredError | None = None,
) -> Dataset:
    async with sessionmaker() as session:
        dataset = await get_dataset(session, dataset_id)
        dataset.finished_at = utcnow()
        dataset.heartbeat_at = dataset.finished_at
        if error is not None:
            dataset.status = DatasetStatus.FAILED
            dataset.error = error
            dataset.stats = stats.to_dict() if stats is not None else {}
            dataset.group_count = dataset.trajectory_count = dataset.trainable_turns = 0
        else:
            assert stats is not None
            dataset.status = DatasetStatus.READY
            dataset.error = None
            dataset.stats = stats.to_dict()
            dataset.group_count = stats.groups_kept
            dataset.trajectory_count = stats.rows_used
            dataset.trainable_turns = stats.trainable_turns
        await session.commit()
        return dataset


def _error_of(exc: BaseException, source: TrajectorySource | None, settings: Settings) -> StoredError:
    if isinstance(exc, AppError):
        return exc.stored(default_code="build_failed")
    described = source.describe_error(exc, settings) if source is not None else None
    return described or stored_error("build_failed", f"{type(exc).__name__}: {exc}"[:500])


async def build_dataset(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, dataset_id: str
) -> Dataset:
    """Build a dataset (queued → building → ready | failed) and return it.

    Run by the worker holding the dataset's work item (the lease keeps two builds of one dataset
    apart). Opens its own sessions and commits in short transactions. A dataset found
    `building` was cut short (its worker died): it is started over. A ready or failed one is
    returned unchanged. Never raises for a failed build: the dataset comes back with status
    "failed" and `error = {code, message, param}`. A build cancelled by a worker's shutdown stays
    `building`, for the next worker to start over.
    """
    dataset = await _start(sessionmaker, dataset_id)
    if dataset is None:
        async with sessionmaker() as session:
            return await get_dataset(session, dataset_id)
    build: DatasetBuild | None = None
    source: TrajectorySource | None = None
    try:
        params = DatasetCreate.model_validate(
            {k: v for k, v in dataset.params.items() if k in DatasetCreate.model_fields}
        )
        source = get_source(dataset.source)
        build = source.build(sessionmaker, settings, dataset_id, params, dataset.params)
        stats = await build.run()
    except asyncio.CancelledError:
        # the worker stops (its work item is handed back) or lost its lease: the dataset stays
        # `building`, and the next worker to claim the item starts the build over
        raise
    except Exception as exc:
        error = _error_of(exc, source, settings)
        if error["code"] == "build_failed":
            logger.exception("datasets.build_failed dataset_id=%s", dataset_id)
        else:
            logger.warning(
                "datasets.build_failed dataset_id=%s code=%s message=%s",
                dataset_id,
                error["code"],
                error["message"],
            )
        await _fail_quietly(sessionmaker, dataset_id, build, error)
        async with sessionmaker() as session:
            return await get_dataset(session, dataset_id)
    logger.info(
        "datasets.built dataset_id=%s groups=%s trajectories=%s trainable_turns=%s rows_read=%s seconds=%.2f",
        dataset_id,
        stats.groups_kept,
        stats.rows_used,
        stats.trainable_turns,
        stats.rows_read,
        stats.duration_s,
    )
    return await _finish(sessionmaker, dataset_id, stats=stats)


async def give_up(sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str, attempts: int) -> Dataset:
    """A build whose workers kept dying: fail the dataset with what happened."""
    error = stored_error(
        "build_interrupted",
        f"the build was interrupted {attempts} times (its worker stopped); create the dataset again",
    )
    await _fail_quietly(sessionmaker, dataset_id, None, error)
    async with sessionmaker() as session:
        return await get_dataset(session, dataset_id)


async def _fail_quietly(
    sessionmaker: async_sessionmaker[AsyncSession],
    dataset_id: str,
    build: DatasetBuild | None,
    error: StoredError,
) -> None:
    try:
        writer = (
            build.writer
            if build is not None
            else SnapshotWriter(
                sessionmaker, dataset_id, source="", scorer="", scorer_version="", max_listed_rejections=0
            )
        )
        await writer.discard()
        await _finish(sessionmaker, dataset_id, stats=build.stats if build is not None else None, error=error)
    except Exception:
        logger.exception("datasets.fail_record_failed dataset_id=%s", dataset_id)


async def list_datasets(
    session: AsyncSession, *, after: str | None, limit: int, source: str | None = None
) -> tuple[list[Dataset], bool]:
    """Newest first; `after` is the id of the last dataset of the previous page."""
    query = sa.select(Dataset)
    if source is not None:
        query = query.where(Dataset.source == source)
    return await created_page(
        session, query, Dataset, after=after, limit=limit, newest_first=True, what="dataset"
    )


def ensure_ready(dataset: Dataset) -> None:
    if dataset.status != DatasetStatus.READY:
        raise Conflict(
            f"dataset {dataset.id} is {dataset.status}; its groups are readable once it is ready",
            param="dataset_id",
            code="dataset_not_ready",
        )


async def list_rejections(
    session: AsyncSession, dataset_id: str, *, reason: str | None, after: int | None, limit: int
) -> tuple[list[DatasetRejection], bool]:
    query = sa.select(DatasetRejection).where(DatasetRejection.dataset_id == dataset_id)
    if reason is not None:
        query = query.where(DatasetRejection.reason == reason)
    if after is not None:
        query = query.where(DatasetRejection.id > after)
    rows = list((await session.scalars(query.order_by(DatasetRejection.id).limit(limit + 1))).all())
    return rows[:limit], len(rows) > limit
