"""Datasets: create, build, read. The interface other features rely on:

- `resolve_training_file(session, "file-…" | "ds-…") -> Dataset`
- `list_group_rows(session, dataset_id, start=, limit=) -> [DatasetGroup]` (by position)
- `create_babylon_dataset(session, settings, params) -> Dataset` (status "queued"; flushes)
- `build_dataset(sessionmaker, settings, dataset_id) -> Dataset` (awaitable inline)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.babylon.dataset_build import BabylonBuild
from app.config import Settings
from app.datasets.models import Dataset, DatasetGroup, DatasetRejection
from app.datasets.pushed_build import PushedBuild
from app.datasets.schemas import DatasetCreate
from app.datasets.snapshot import SnapshotWriter
from app.datasets.stats import BuildStats
from app.db import utcnow
from app.errors import AppError, BadRequest, Conflict, NotFound, StoredError, stored_error
from app.files.models import File
from app.ids import new_id
from app.pagination import after_row, created_order, cursor_anchor, fetch_page
from app.scoring.registry import get_scorer

logger = logging.getLogger(__name__)

QUEUED, BUILDING, READY, FAILED = "queued", "building", "ready", "failed"
# a build refreshes its heartbeat at least every 20 s (babylon_build.HEARTBEAT_EVERY_S)
STALE_BUILD_AFTER_S = 600.0


async def get_dataset(session: AsyncSession, dataset_id: str) -> Dataset:
    dataset = await session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset with id {dataset_id!r}", param="dataset_id", code="dataset_not_found")
    return dataset


async def resolve_training_file(session: AsyncSession, file_or_dataset_id: str) -> Dataset:
    """The dataset a job's `training_file` names: a `ds-…` id, or a `file-…` id (an uploaded
    fine-tune JSONL, stored as a dataset with source="file" when it was uploaded).

    Raises NotFound(param="training_file", code="file_not_found") for an unknown id or a file
    whose dataset is gone. The dataset may not be ready yet: check `status` ("ready").
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


def _check_buildable(settings: Settings, params: DatasetCreate) -> None:
    if params.source == "babylon":
        if not settings.babylon_database_url:
            raise BadRequest(
                "the Babylon source is not configured: set BABYLON_DATABASE_URL to the game's Postgres",
                param="source",
                code="babylon_not_configured",
            )
        get_scorer(params.scorer, params.scorer_version)


async def create_dataset(session: AsyncSession, settings: Settings, params: DatasetCreate) -> Dataset:
    """A queued dataset row for these parameters (validated: source configured, scorer known).
    The caller commits, then builds it (`build_dataset`) inline or in the background."""
    _check_buildable(settings, params)
    stored = params.model_dump(mode="json")
    if params.source == "babylon":
        scorer = get_scorer(params.scorer, params.scorer_version)
        stored["scorer_version"] = scorer.version  # pin "newest" at creation: a rebuild scores the same way
        if params.write_scores is None:
            stored["write_scores"] = settings.babylon.write_scores
    dataset = Dataset(id=new_id("ds"), status=QUEUED, source=params.source, params=stored, stats={})
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


async def create_babylon_dataset(
    session: AsyncSession, settings: Settings, params: DatasetCreate | Mapping[str, Any]
) -> Dataset:
    """A queued dataset built from the game's Postgres (`params.source` must be "babylon").

    `params` (a DatasetCreate or an equivalent dict) selects rows by `window_ids`, `start_time`/`end_time` or `trajectory_ids` (a
    `training_batches` row's JSON list), with `include_used`, `scorer`, `min_agents`,
    `max_group_size`, `drop_equal_rewards`. Raises BadRequest `babylon_not_configured` when
    BABYLON_DATABASE_URL is unset and `unknown_scorer` for a scorer that is not registered.
    """
    parsed = parse_params(params)
    if parsed.source != "babylon":
        raise BadRequest("create_babylon_dataset builds from the game's database", param="source")
    return await create_dataset(session, settings, parsed)


async def _claim(sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str) -> Dataset | None:
    """Move a queued dataset to building; None if it was not queued (someone else has it)."""
    async with sessionmaker() as session:
        now = utcnow()
        result = await session.execute(
            sa.update(Dataset)
            .where(Dataset.id == dataset_id, Dataset.status == QUEUED)
            .values(status=BUILDING, heartbeat_at=now)
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
            dataset.status = FAILED
            dataset.error = error
            dataset.stats = stats.to_dict() if stats is not None else {}
            dataset.group_count = dataset.trajectory_count = dataset.trainable_turns = 0
        else:
            assert stats is not None
            dataset.status = READY
            dataset.error = None
            dataset.stats = stats.to_dict()
            dataset.group_count = stats.groups_kept
            dataset.trajectory_count = stats.rows_used
            dataset.trainable_turns = stats.trainable_turns
        await session.commit()
        return dataset


def _redact(message: str, url: str | None) -> str:
    """Drivers may quote parts of the connection string; the game DB's password never leaves."""
    if url:
        password = sa.engine.make_url(url).password
        if password:
            message = message.replace(str(password), "***")
    return message


def _error_of(exc: BaseException, babylon_url: str | None) -> StoredError:
    if isinstance(exc, AppError):
        return exc.stored(default_code="build_failed")
    if isinstance(exc, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)):
        message = f"reading the game's database failed: {type(exc).__name__}: {exc}"
        return stored_error("babylon_unavailable", _redact(message, babylon_url)[:500])
    message = _redact(f"{type(exc).__name__}: {exc}", babylon_url)
    return stored_error("build_failed", message[:500])


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
    params = DatasetCreate.model_validate(
        {k: v for k, v in dataset.params.items() if k in DatasetCreate.model_fields}
    )
    build: BabylonBuild | PushedBuild | None = None
    try:
        if params.source == "babylon":
            _check_buildable(settings, params)
            assert settings.babylon_database_url is not None
            write_back = bool(dataset.params.get("write_scores"))
            build = BabylonBuild(
                sessionmaker,
                settings.babylon_database_url,
                dataset_id,
                params,
                get_scorer(params.scorer, params.scorer_version),
                write_back=write_back,
            )
        else:
            build = PushedBuild(sessionmaker, dataset_id, params)
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
        error = _error_of(exc, settings.babylon_database_url)
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
    build: BabylonBuild | PushedBuild | None,
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
            Dataset.status.in_((QUEUED, BUILDING)),
            sa.func.coalesce(Dataset.heartbeat_at, Dataset.created_at) < cutoff,
        )
        .values(
            status=FAILED,
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
    if dataset.status != READY:
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
