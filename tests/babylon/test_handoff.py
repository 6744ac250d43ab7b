"""The game-side writes of app/babylon/handoff.py against the game's real DDL (Postgres)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import asyncpg
import pytest

from app.babylon import handoff

BabylonFactory = Callable[..., str]


async def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("latest", "expected"),
    [(None, "v1.0.0"), ("v1.0.0", "v1.0.1"), ("v2.3.9", "v2.3.10"), ("1.0", "v1.0.0"), ("", "v1.0.0")],
)
def test_next_version_bumps_the_patch(latest: str | None, expected: str) -> None:
    assert handoff.next_version(latest) == expected


async def make_batch(dsn: str, batch_id: str, status: str = "training") -> handoff.Batch:
    ids = [
        r["trajectoryId"]
        for r in await fetch(dsn, 'SELECT "trajectoryId" FROM trajectories ORDER BY id LIMIT 3')
    ]
    await fetch(
        dsn,
        'INSERT INTO training_batches (id, "batchId", "scenarioId", "baseModel", "modelVersion", "trajectoryIds", '
        "\"rewardsJson\", status) VALUES ($1, $1, '2025-11-14T00:00', 'b', 'v0.0.1', $2, '[]', $3)",
        batch_id,
        json.dumps(ids),
        status,
    )
    batch = await handoff.load_batch(dsn, batch_id)
    assert batch is not None
    assert batch.trajectory_ids == ids
    return batch


async def test_complete_inserts_one_ready_model_row_and_is_idempotent(
    babylon_db_factory: BabylonFactory,
) -> None:
    dsn = babylon_db_factory(windows=2, agents=3)
    batch = await make_batch(dsn, "batch-h1")
    kwargs = {
        "storage_path": "wandb-artifact:///e/p/babylon-agent:step4",
        "base_model": "OpenPipe/Qwen3-14B-Instruct",
        "avg_reward": 0.42,
        "training_loss": 0.3,
        "wandb_artifact_id": "e/p/babylon-agent:step4",
    }
    first = await handoff.complete(dsn, batch=batch, **kwargs)  # type: ignore[arg-type]
    second = await handoff.complete(dsn, batch=batch, **kwargs)  # type: ignore[arg-type]
    assert first.inserted
    assert not second.inserted
    assert (first.id, first.version) == (second.id, second.version)
    rows = await fetch(dsn, 'SELECT * FROM trained_models WHERE "trainingBatch" = $1', "batch-h1")
    assert len(rows) == 1
    row = rows[0]
    assert row["modelId"] == f"babylon-agent-{row['version']}"
    assert row["status"] == "ready"
    assert row["storagePath"] == kwargs["storage_path"]
    assert row["avgReward"] == 0.42
    assert row["updatedAt"] is not None
    assert row["wandbArtifactId"] == "e/p/babylon-agent:step4"
    done = (await fetch(dsn, "SELECT * FROM training_batches WHERE id = 'batch-h1'"))[0]
    assert done["status"] == "completed"
    assert done["completedAt"] is not None
    assert done["trainingLoss"] == 0.3
    marked = await fetch(
        dsn,
        'SELECT "usedInTraining", "trainedInBatch", "updatedAt" FROM trajectories WHERE "trajectoryId" = ANY($1::text[])',
        batch.trajectory_ids,
    )
    assert all(r["usedInTraining"] and r["trainedInBatch"] == "batch-h1" for r in marked)


async def test_versions_continue_after_the_newest_and_skip_taken_ones(
    babylon_db_factory: BabylonFactory,
) -> None:
    dsn = babylon_db_factory(windows=2, agents=3)
    newest = (await fetch(dsn, 'SELECT version FROM trained_models ORDER BY "createdAt" DESC LIMIT 1'))[0][
        "version"
    ]
    taken = handoff.next_version(newest)
    await fetch(
        dsn,
        'INSERT INTO trained_models (id, "modelId", version, "baseModel", "storagePath", status, "createdAt", "updatedAt") '
        "VALUES ('m-old', $1, $2, 'b', 's', 'archived', '2000-01-01', '2000-01-01')",
        f"babylon-agent-{taken}",
        taken,
    )
    batch = await make_batch(dsn, "batch-h2")
    model = await handoff.complete(
        dsn,
        batch=batch,
        storage_path="p",
        base_model="b",
        avg_reward=None,
        training_loss=None,
        wandb_artifact_id=None,
    )
    assert model.version == handoff.next_version(taken)


async def test_mark_failed_records_the_error_but_never_undoes_a_completed_batch(
    babylon_db_factory: BabylonFactory,
) -> None:
    dsn = babylon_db_factory(windows=1, agents=3)
    failing = await make_batch(dsn, "batch-h3")
    await handoff.mark_failed(dsn, failing.id, "ftjob-1: W&B reported that step 1 failed: OOM")
    row = (
        await fetch(dsn, "SELECT status, error, \"completedAt\" FROM training_batches WHERE id = 'batch-h3'")
    )[0]
    assert row["status"] == "failed"
    assert "OOM" in row["error"]
    assert row["completedAt"] is not None
    await handoff.mark_training(dsn, failing.id)  # a retried batch trains again
    assert (await handoff.load_batch(dsn, "batch-h3")).status == "training"  # type: ignore[union-attr]

    completed = await make_batch(dsn, "batch-h4", status="completed")
    await handoff.mark_failed(dsn, completed.id, "late failure")
    await handoff.mark_training(dsn, completed.id)
    assert (await handoff.load_batch(dsn, "batch-h4")).status == "completed"  # type: ignore[union-attr]


async def test_pending_batches_come_oldest_first(babylon_db_factory: BabylonFactory) -> None:
    dsn = babylon_db_factory(generate=False)
    for i, hour in enumerate([10, 9, 11]):
        await fetch(
            dsn,
            'INSERT INTO training_batches (id, "batchId", "baseModel", "modelVersion", "trajectoryIds", "rewardsJson", '
            "status, \"createdAt\") VALUES ($1, $1, 'b', 'v', '[]', '[]', 'pending', $2)",
            f"p{i}",
            dt.datetime(2025, 11, 15, hour),
        )
    assert [b.id for b in await handoff.pending_batches(dsn, 10)] == ["p1", "p0", "p2"]
