"""Writes back to the game's Postgres (babylon-data.md §2.4, §2.5, §7): batch status, the
`trained_models` row the game's agents pick up, and the trajectories marked as used.

Every write is idempotent: a resumed job finds the model row it inserted before (by
`"trainingBatch"`) and never inserts a second one. Timestamps are UTC `TIMESTAMP(3)` values
without a zone, as Prisma writes them; `"updatedAt"` has no DB default and is always set.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from app.babylon.connection import connect
from app.ids import new_id

logger = logging.getLogger(__name__)

# Serialises version numbering across workers (pg_advisory_xact_lock in the game's DB).
HANDOFF_LOCK_KEY = 0x7472_6169_6E68  # "trainh"
NOW_UTC = "(NOW() AT TIME ZONE 'UTC')"
VERSION_PATTERN = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")
MODEL_ID_PREFIX = "babylon-agent-"


class BatchStatus(StrEnum):
    """`training_batches.status`, the game's values (the SQL below writes them as literals)."""

    PENDING = "pending"
    TRAINING = "training"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class Batch:
    id: str
    batch_id: str
    scenario_id: str | None
    base_model: str
    model_version: str
    trajectory_ids: list[str]
    status: str
    error: str | None


@dataclass(frozen=True)
class TrainedModel:
    id: str
    model_id: str
    version: str
    storage_path: str
    inserted: bool


BATCH_COLUMNS = 'id, "batchId", "scenarioId", "baseModel", "modelVersion", "trajectoryIds", status, error'


def _batch(row: asyncpg.Record) -> Batch:
    try:
        ids = json.loads(row["trajectoryIds"] or "[]")
    except ValueError:
        ids = []
    return Batch(
        id=row["id"],
        batch_id=row["batchId"],
        scenario_id=row["scenarioId"],
        base_model=row["baseModel"],
        model_version=row["modelVersion"],
        trajectory_ids=[str(i) for i in ids] if isinstance(ids, list) else [],
        status=row["status"],
        error=row["error"],
    )


def next_version(latest: str | None) -> str:
    """The next patch version after `latest` (`v1.0.0` when there is none or it is unparsable)."""
    match = VERSION_PATTERN.match(latest or "")
    if not match:
        return "v1.0.0"
    major, minor, patch = (int(g) for g in match.groups())
    return f"v{major}.{minor}.{patch + 1}"


async def load_batch(url: str, batch_id: str) -> Batch | None:
    """A `training_batches` row by its `"batchId"` (or its `id`; the game sets both the same)."""
    conn = await connect(url)
    try:
        row = await conn.fetchrow(
            f'SELECT {BATCH_COLUMNS} FROM training_batches WHERE "batchId" = $1 OR id = $1 '
            'ORDER BY ("batchId" = $1) DESC LIMIT 1',
            batch_id,
        )
    finally:
        await conn.close()
    return _batch(row) if row else None


async def pending_batches(url: str, limit: int) -> list[Batch]:
    """Batches the game inserted with status 'pending', oldest first (the old worker's order)."""
    conn = await connect(url)
    try:
        rows = await conn.fetch(
            f"SELECT {BATCH_COLUMNS} FROM training_batches WHERE status = 'pending' "
            'ORDER BY "createdAt", id LIMIT $1',
            limit,
        )
    finally:
        await conn.close()
    return [_batch(r) for r in rows]


async def create_batch_for_recent_windows(url: str, *, windows: int, base_model: str) -> Batch | None:
    """For POST /train without batchId: a batch of the newest windows' unused training
    trajectories (windows with at least two, since a group needs two rewards). None if none."""
    conn = await connect(url)
    try:
        async with conn.transaction():
            window_ids = [
                r["windowId"]
                for r in await conn.fetch(
                    'SELECT "windowId" FROM trajectories WHERE "isTrainingData" AND NOT "usedInTraining" '
                    'AND "windowId" IS NOT NULL GROUP BY "windowId" HAVING COUNT(*) >= 2 '
                    'ORDER BY "windowId" DESC LIMIT $1',
                    windows,
                )
            ]
            if not window_ids:
                return None
            trajectory_ids = [
                r["trajectoryId"]
                for r in await conn.fetch(
                    'SELECT "trajectoryId" FROM trajectories WHERE "windowId" = ANY($1::text[]) '
                    'AND "isTrainingData" AND NOT "usedInTraining" ORDER BY "startTime", id',
                    window_ids,
                )
            ]
            latest = await conn.fetchval(
                'SELECT version FROM trained_models ORDER BY "createdAt" DESC, id DESC LIMIT 1'
            )
            batch_id = f"batch-{int(time.time() * 1000)}"
            row = await conn.fetchrow(
                f'INSERT INTO training_batches (id, "batchId", "scenarioId", "baseModel", "modelVersion", '
                f'"trajectoryIds", "rewardsJson", status, "createdAt") '
                f"VALUES ($1, $1, $2, $3, $4, $5, '[]', 'pending', {NOW_UTC}) RETURNING {BATCH_COLUMNS}",
                batch_id,
                window_ids[0],
                base_model,
                next_version(latest),
                json.dumps(trajectory_ids),
            )
    finally:
        await conn.close()
    return _batch(row)


async def mark_training(url: str, batch_row_id: str) -> None:
    """The batch is being trained (idempotent; a finished batch is left alone)."""
    conn = await connect(url)
    try:
        await conn.execute(
            f'UPDATE training_batches SET status = \'training\', "startedAt" = COALESCE("startedAt", {NOW_UTC}), '
            "error = NULL WHERE id = $1 AND status IN ('pending', 'training', 'failed')",
            batch_row_id,
        )
    finally:
        await conn.close()


async def mark_failed(url: str, batch_row_id: str, error: str) -> None:
    conn = await connect(url)
    try:
        await conn.execute(
            f"UPDATE training_batches SET status = 'failed', error = $2, "
            f'"completedAt" = COALESCE("completedAt", {NOW_UTC}) WHERE id = $1 AND status <> \'completed\'',
            batch_row_id,
            error[:4000],
        )
    finally:
        await conn.close()


async def complete(
    url: str,
    *,
    batch: Batch,
    storage_path: str,
    base_model: str,
    avg_reward: float | None,
    training_loss: float | None,
    wandb_artifact_id: str | None,
) -> TrainedModel:
    """In one transaction: the `trained_models` row (once per batch), the batch's trajectories
    marked used, and the batch completed."""
    conn = await connect(url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", HANDOFF_LOCK_KEY)
            existing = await conn.fetchrow(
                'SELECT id, "modelId", version, "storagePath" FROM trained_models WHERE "trainingBatch" = $1 '
                'ORDER BY "createdAt" LIMIT 1',
                batch.id,
            )
            if existing is not None:
                model = TrainedModel(
                    id=existing["id"],
                    model_id=existing["modelId"],
                    version=existing["version"],
                    storage_path=existing["storagePath"],
                    inserted=False,
                )
            else:
                model = await _insert_model(
                    conn,
                    batch=batch,
                    storage_path=storage_path,
                    base_model=base_model,
                    avg_reward=avg_reward,
                    wandb_artifact_id=wandb_artifact_id,
                )
            if batch.trajectory_ids:
                await conn.execute(
                    'UPDATE trajectories SET "usedInTraining" = true, "trainedInBatch" = $1, '
                    f'"updatedAt" = {NOW_UTC} WHERE "trajectoryId" = ANY($2::text[])',
                    batch.id,
                    batch.trajectory_ids,
                )
            elif batch.scenario_id:
                # a window batch: its window's training trajectories
                await conn.execute(
                    'UPDATE trajectories SET "usedInTraining" = true, "trainedInBatch" = $1, '
                    f'"updatedAt" = {NOW_UTC} WHERE "windowId" = $2 AND "isTrainingData" '
                    'AND ("trainedInBatch" IS NULL OR "trainedInBatch" = $1)',
                    batch.id,
                    batch.scenario_id,
                )
            await conn.execute(
                "UPDATE training_batches SET status = 'completed', error = NULL, "
                f'"startedAt" = COALESCE("startedAt", {NOW_UTC}), "completedAt" = COALESCE("completedAt", {NOW_UTC}), '
                '"trainingLoss" = COALESCE($2, "trainingLoss") WHERE id = $1',
                batch.id,
                training_loss,
            )
    finally:
        await conn.close()
    return model


async def _insert_model(
    conn: asyncpg.Connection,
    *,
    batch: Batch,
    storage_path: str,
    base_model: str,
    avg_reward: float | None,
    wandb_artifact_id: str | None,
) -> TrainedModel:
    latest = await conn.fetchval(
        'SELECT version FROM trained_models ORDER BY "createdAt" DESC, id DESC LIMIT 1'
    )
    version = next_version(latest)
    # versions written out of order by others may already be taken: skip to a free one
    while await conn.fetchval('SELECT 1 FROM trained_models WHERE "modelId" = $1', MODEL_ID_PREFIX + version):
        version = next_version(version)
    row_id = new_id("model")
    await conn.execute(
        'INSERT INTO trained_models (id, "modelId", version, "baseModel", "trainingBatch", "storagePath", '
        f'status, "avgReward", "wandbArtifactId", "createdAt", "updatedAt") '
        f"VALUES ($1, $2, $3, $4, $5, $6, 'ready', $7, $8, {NOW_UTC}, {NOW_UTC})",
        row_id,
        MODEL_ID_PREFIX + version,
        version,
        base_model,
        batch.id,
        storage_path,
        avg_reward,
        wandb_artifact_id,
    )
    logger.info("babylon.model_inserted batch=%s version=%s model=%s", batch.id, version, storage_path)
    return TrainedModel(
        id=row_id,
        model_id=MODEL_ID_PREFIX + version,
        version=version,
        storage_path=storage_path,
        inserted=True,
    )
