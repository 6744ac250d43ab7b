"""Datasets: create, build, read. The interface other features rely on:

- `resolve_training_file(session, "file-…" | "ds-…") -> Dataset`
- `list_group_rows(session, dataset_id, start=, limit=) -> [DatasetGroup]` (by position)
- `create_babylon_dataset(session, settings, params) -> Dataset` (status "queued"; flushes)
- `build_dataset(sessionmaker, settings, dataset_id) -> Dataset` (awaitable inline)

Every dataset is built by a worker: creating one stages a `dataset_build` work item in the same
transaction (app/worker/items.py), which any worker claims with a lease; a build whose worker
died is started over by the next one (`build_dataset` discards the partial snapshot first).
"""

from __future__ import annotations

import asyncio
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
from app.errors import AppError, BadRequest, Conflict, NotFound
from app.files.build import FileBuild
from app.files.models import File, FileChunk, FileStatus
from app.ids import new_id
from app.pagination import after_row, created_order, cursor_anchor, fetch_page
from app.scoring.registry import get_scorer
from app.worker.items import enqueue
from app.worker.models import WorkKind

logger = logging.getLogger(__name__)

QUEUED, BUILDING, READY, FAILED = "queued", "building", "ready", "failed"


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
    """A queued dataset row for these parameters (validated: source configured, scorer known)
    and its build's work item; a worker builds it once the caller commits."""
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
    enqueue(session, WorkKind.DATASET_BUILD, dataset.id)
    await session.flush()
    return dataset


def queue_file_dataset(session: AsyncSession, file: File) -> Dataset:
    """The dataset (source="file") an upload's groups become, queued for a worker to build."""
    dataset = Dataset(id=new_id("ds"), status=QUEUED, source="file", params={"file_id": file.id}, stats={})
    session.add(dataset)
    enqueue(session, WorkKind.DATASET_BUILD, dataset.id)
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


async def _start(sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str) -> Dataset | None:
    """Move a queued dataset to building, or start a build over whose worker died (its partial
    snapshot is removed); None if it is already ready or failed."""
    async with sessionmaker() as session:
        dataset = await get_dataset(session, dataset_id)
        if dataset.status not in (QUEUED, BUILDING):
            return None
        restart = dataset.status == BUILDING
        if restart:
            await session.execute(sa.delete(DatasetGroup).where(DatasetGroup.dataset_id == dataset_id))
            await session.execute(
                sa.delete(DatasetRejection).where(DatasetRejection.dataset_id == dataset_id)
            )
            logger.warning("datasets.build_restarted dataset_id=%s", dataset_id)
        dataset.status = BUILDING
        dataset.heartbeat_at = utcnow()
        dataset.stats = {}
        await session.commit()
        return dataset


async def _finish(
    sessionmaker: async_sessionmaker[AsyncSession],
    dataset_id: str,
    *,
    stats: BuildStats | None = None,
    error: dict[str, Any] | None = None,
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
        if dataset.source == "file":
            await session.execute(
                sa.update(File)
                .where(File.dataset_id == dataset_id)
                .values(
                    status=FileStatus.ERROR if error is not None else FileStatus.PROCESSED,
                    status_details=(error or {}).get("message"),
                )
            )
            # the build has read the upload's bytes: its groups (or its error) are what remains
            await session.execute(
                sa.delete(FileChunk).where(FileChunk.file_id == dataset.params.get("file_id"))
            )
        await session.commit()
        return dataset


def _redact(message: str, url: str | None) -> str:
    """Drivers may quote parts of the connection string; the game DB's password never leaves."""
    if url:
        password = sa.engine.make_url(url).password
        if password:
            message = message.replace(str(password), "***")
    return message


def _error_of(exc: BaseException, babylon_url: str | None) -> dict[str, Any]:
    if isinstance(exc, AppError):
        return {"code": exc.code or "build_failed", "message": exc.message, "param": exc.param}
    if isinstance(exc, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)):
        message = f"reading the game's database failed: {type(exc).__name__}: {exc}"
        return {"code": "babylon_unavailable", "message": _redact(message, babylon_url)[:500], "param": None}
    message = _redact(f"{type(exc).__name__}: {exc}", babylon_url)
    return {"code": "build_failed", "message": message[:500], "param": None}


async def build_dataset(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, dataset_id: str
) -> Dataset:
    """Build a dataset (queued → building → ready | failed) and return it.

    Run by the worker holding the dataset's work item (the lease keeps two builds of one dataset
    apart). Opens its own sessions and commits in short transactions. A dataset found
    `building` was cut short (its worker died): it is started over. A ready or failed one is
    returned unchanged. Never raises for a failed build: the dataset comes back with status
    "failed" and `error = {code, message, param}`. A build cancelled by a worker's shutdown goes
    back to queued, for the next worker.
    """
    dataset = await _start(sessionmaker, dataset_id)
    if dataset is None:
        async with sessionmaker() as session:
            return await get_dataset(session, dataset_id)
    params = DatasetCreate.model_validate(
        {k: v for k, v in dataset.params.items() if k in DatasetCreate.model_fields}
    )
    build: BabylonBuild | PushedBuild | FileBuild | None = None
    try:
        if dataset.source == "file":
            build = FileBuild(sessionmaker, dataset_id, str(dataset.params.get("file_id")))
        elif params.source == "babylon":
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
        # the worker stops (its work item is handed back) or lost its lease: the dataset stays
        # `building`, and the next worker to claim the item starts the build over
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


async def give_up(sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str, attempts: int) -> Dataset:
    """A build whose workers kept dying: fail the dataset with what happened."""
    error = {
        "code": "build_interrupted",
        "message": f"the build was interrupted {attempts} times (its worker stopped); create the dataset again",
        "param": None,
    }
    await _fail_quietly(sessionmaker, dataset_id, None, error)
    async with sessionmaker() as session:
        return await get_dataset(session, dataset_id)


async def _fail_quietly(
    sessionmaker: async_sessionmaker[AsyncSession],
    dataset_id: str,
    build: BabylonBuild | PushedBuild | FileBuild | None,
    error: dict[str, Any],
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
