"""Datasets: create, build, read. The interface other features rely on:

- `list_group_rows(session, dataset_id, start=, limit=) -> [DatasetGroup]` (by position)
- `create_dataset(session, settings, params) -> Dataset` (status "queued"; flushes)
- `build_dataset(sessionmaker, settings, dataset_id) -> Dataset` (awaitable inline)
"""

from __future__ import annotations

import asyncio
import datetime as dt
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
from app.datasets.sources import DatasetBuild, TrajectorySource, get_source
from app.datasets.stats import BuildStats
from app.db import utcnow
from app.errors import AppError, BadRequest, Conflict, NotFound, StoredError, stored_error
from app.ids import new_id
from app.pagination import after_row, created_order, cursor_anchor, fetch_page

logger = logging.getLogger(__name__)

# a build refreshes its heartbeat at least every 20 s (a source's builder flushes that often)
STALE_BUILD_AFTER_S = 600.0


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
    known). The caller commits, then builds it (`build_dataset`) inline or in the background."""
    source = get_source(params.source)
    stored = {**params.model_dump(mode="json"), **source.prepare(settings, params)}
    dataset = Dataset(
        id=new_id("ds"), status=DatasetStatus.QUEUED, source=params.source, params=stored, stats={}
    )
    session.add(dataset)
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


async def _claim(sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str) -> Dataset | None:
    """Move a queued dataset to building; None if it was not queued (someone else has it)."""
    async with sessionmaker() as session:
        now = utcnow()
        result = await session.execute(
            sa.update(Dataset)
            .where(Dataset.id == dataset_id, Dataset.status == DatasetStatus.QUEUED)
            .values(status=DatasetStatus.BUILDING, heartbeat_at=now)
        )
        await session.commit()
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return await get_dataset(session, dataset_id)


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
    """Build a queued dataset (queued → building → ready | failed) and return it.

    Safe to await inline (a job's validation step) or to run as a background task. Opens its
    own sessions and commits in short transactions. A dataset that is not queued (already
    building elsewhere, ready, failed) is returned unchanged. Never raises for a failed build:
    the dataset comes back with status "failed" and `error = {code, message, param}`.
    """
    dataset = await _claim(sessionmaker, dataset_id)
    if dataset is None:
        async with sessionmaker() as session:
            return await get_dataset(session, dataset_id)
    build: DatasetBuild | None = None
    source: TrajectorySource | None = None
    try:
        params = DatasetCreate.model_validate(
            {k: v for k, v in dataset.params.items() if k in DatasetCreate.model_fields}
        )
        source = get_source(params.source)
        build = source.build(sessionmaker, settings, dataset_id, params, dataset.params)
        stats = await build.run()
    except asyncio.CancelledError:
        await _fail_quietly(
            sessionmaker,
            dataset_id,
            build,
            stored_error("build_cancelled", "the build was cancelled (service shutdown?)"),
        )
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


async def fail_stale_builds(session: AsyncSession, *, stale_after_s: float = STALE_BUILD_AFTER_S) -> int:
    """Mark builds whose heartbeat stopped (the process died) as failed; returns how many."""
    cutoff = utcnow() - dt.timedelta(seconds=stale_after_s)
    result = await session.execute(
        sa.update(Dataset)
        .where(
            Dataset.status.in_((DatasetStatus.QUEUED, DatasetStatus.BUILDING)),
            sa.func.coalesce(Dataset.heartbeat_at, Dataset.created_at) < cutoff,
        )
        .values(
            status=DatasetStatus.FAILED,
            finished_at=utcnow(),
            error=stored_error(
                "build_interrupted", "the build stopped without finishing; create the dataset again"
            ),
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def list_datasets(
    session: AsyncSession, *, after: str | None, limit: int, source: str | None = None
) -> tuple[list[Dataset], bool]:
    """Newest first; `after` is the id of the last dataset of the previous page."""
    query = sa.select(Dataset)
    if source is not None:
        query = query.where(Dataset.source == source)
    if after is not None:
        anchor = await cursor_anchor(session, Dataset, after, what="dataset")
        query = query.where(after_row(Dataset, anchor, newest_first=True))
    return await fetch_page(session, query.order_by(*created_order(Dataset, newest_first=True)), limit)


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
