"""Rows for the dashboard, written straight to the database: jobs with steps, checkpoints and
events, many jobs at once (bulk inserts), gateway traffic, captures and a dataset with stats.

Used by the dashboard's tests, its benchmark (bench/dashboard/) and the screenshot script
(bench/dashboard/screenshots.py). The shapes are the ones the worker and the gateway write.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.datasets.models import Dataset, DatasetGroup, DatasetRejection
from app.db import utcnow
from app.gateway.models import CapturedCompletion, GatewayRequest
from app.ids import new_id
from app.jobs.events import Event, add_events
from app.jobs.models import FineTuningJob, JobStatus
from app.registry import service as registry
from app.registry.models import Checkpoint, ServedModel

BASE_MODEL = "OpenPipe/Qwen3-14B-Instruct"
PROJECT = "babylon-rl"
ENTITY = "emulator-entity"
HYPERPARAMETERS: dict[str, Any] = {"groups_per_step": 2, "learning_rate": 1e-5, "n_epochs": 1}


def step_metrics(step: int, total: int) -> dict[str, float]:
    """Plausible per-step metrics (the keys the runner records on a checkpoint)."""
    progress = step / max(total, 1)
    return {
        "reward_mean": round(0.3 + 0.5 * progress + 0.03 * math.sin(step), 6),
        "reward_std": round(0.2 - 0.1 * progress, 6),
        "loss": round(0.7 - 0.3 * progress, 6),
        "train_loss": round(0.7 - 0.3 * progress, 6),
        "grad_norm": round(0.9 - 0.4 * progress, 6),
        "num_trainable_tokens": float(400 + 10 * step),
        "num_groups": 2.0,
        "trainable_turns": 6.0,
    }


def _job_row(
    job_id: str,
    *,
    status: str,
    model_name: str,
    total: int,
    completed: int,
    created_at: dt.datetime,
    metadata: dict[str, str] | None,
    dataset_id: str = "ds-seed",
) -> dict[str, Any]:
    return {
        "id": job_id,
        "created_at": created_at,
        "updated_at": created_at,
        "status": status,
        "base_model": BASE_MODEL,
        "training_file": dataset_id,
        "dataset_id": dataset_id,
        "suffix": model_name,
        "seed": 7,
        "job_metadata": metadata,
        "hyperparameters": HYPERPARAMETERS,
        "model_name": model_name,
        "project": PROJECT,
        "entity": ENTITY,
        "total_steps": total,
        "completed_steps": completed,
        "webhook_urls": [],
        "attempts": 0,
    }


@dataclass
class SeededJob:
    job_id: str
    model: ServedModel
    checkpoint_ids: list[str]


async def seed_job(
    session: AsyncSession,
    *,
    steps: int,
    total: int | None = None,
    status: str = JobStatus.SUCCEEDED,
    model_name: str = "agent",
    metadata: dict[str, str] | None = None,
    events_per_step: int = 3,
) -> SeededJob:
    """One job whose first `steps` steps finished: a checkpoint per step on its model line
    (latest/best moved), metrics events and step events. Flushes, never commits."""
    job_id = new_id("ftjob")
    total = total if total is not None else steps
    await session.execute(
        sa.insert(FineTuningJob),
        [
            _job_row(
                job_id,
                status=status,
                model_name=model_name,
                total=total,
                completed=steps,
                created_at=utcnow(),
                metadata=metadata,
            )
        ],
    )
    model = await registry.get_or_create_model(
        session, entity=ENTITY, project=PROJECT, name=model_name, base_model=BASE_MODEL
    )
    base = await session.scalar(
        sa.select(sa.func.max(Checkpoint.step)).where(Checkpoint.model_id == model.id)
    )
    ids: list[str] = []
    events: list[Event] = [Event(f"Job queued: {total} training steps")]
    best = None
    for number in range(1, steps + 1):
        metrics = step_metrics(number, total)
        ckpt = await registry.record_checkpoint(
            session, model, step=(base or 0) + number, metrics=metrics, job_id=job_id, job_step=number
        )
        ids.append(ckpt.id)
        for g in range(1, events_per_step):
            events.append(
                Event(
                    f"Step {number}/{total}, gradient step {g}",
                    type="metrics",
                    data={"step": number, "gradient_step": g, "loss": metrics["loss"]},
                )
            )
        events.append(Event(f"Step {number}/{total} done: checkpoint {ckpt.artifact_name}"))
        await registry.set_alias(session, model, "latest", ckpt)
        if best is None or metrics["reward_mean"] > best[0]:
            best = (metrics["reward_mean"], ckpt)
    if best is not None:
        await registry.set_alias(session, model, "best", best[1])
    await add_events(session, job_id, events)
    await session.flush()
    return SeededJob(job_id, model, ids)


async def seed_many_jobs(session: AsyncSession, count: int, *, batch: int = 2_000) -> None:
    """`count` finished and running jobs, spread over the last 30 days (bulk insert)."""
    rng = random.Random(11)
    now = utcnow()
    statuses = [JobStatus.SUCCEEDED] * 6 + [
        JobStatus.FAILED,
        JobStatus.CANCELLED,
        JobStatus.RUNNING,
        JobStatus.QUEUED,
    ]
    rows = []
    for i in range(count):
        created = now - dt.timedelta(seconds=rng.uniform(0, 30 * 86_400))
        rows.append(
            _job_row(
                new_id("ftjob"),
                status=rng.choice(statuses),
                model_name=f"agent-{i % 20}",
                total=10,
                completed=rng.randint(0, 10),
                created_at=created,
                metadata={"team": f"t{i % 5}", "run": str(i)},
            )
        )
        if len(rows) >= batch:
            await session.execute(sa.insert(FineTuningJob), rows)
            rows = []
    if rows:
        await session.execute(sa.insert(FineTuningJob), rows)
    await session.flush()


async def seed_gateway_traffic(
    session: AsyncSession, count: int, *, models: tuple[str, ...] = ("agent:latest", "agent:best")
) -> None:
    """`count` request-log rows over the last 50 minutes; models alternate, every 10th request
    fails (all on the second model), the even ones carry a trajectory id."""
    rng = random.Random(5)
    now = utcnow()
    rows = []
    for i in range(count):
        model = models[i % len(models)]
        status = 500 if i % 10 == 9 else 200
        rows.append(
            {
                "created_at": now - dt.timedelta(seconds=rng.uniform(0, 3_000)),
                "request_id": f"req-{i}",
                "key_id": "bootstrap-0",
                "route": "chat.completions",
                "model_requested": model,
                "model_served": model,
                "stream": False,
                "status_code": status,
                "error_code": "upstream_error" if status >= 400 else None,
                "latency_ms": rng.lognormvariate(5, 0.4),
                "overhead_ms": 0.4,
                "prompt_tokens": 120,
                "completion_tokens": 30,
                "trajectory_id": f"traj-{i % 7}" if i % 2 == 0 else None,
            }
        )
    if rows:
        await session.execute(sa.insert(GatewayRequest), rows)
    await session.flush()


def _choice(words: list[str], rng: random.Random) -> dict[str, Any]:
    return {
        "index": 0,
        "finish_reason": "stop",
        "message": {"role": "assistant", "content": " ".join(words)},
        "logprobs": {
            "content": [
                {
                    "token": w + " ",
                    "logprob": round(-rng.expovariate(1.5), 4),
                    "bytes": None,
                    "top_logprobs": [],
                }
                for w in words
            ],
            "refusal": None,
        },
    }


async def seed_captures(session: AsyncSession, trajectory_id: str, steps: int = 3) -> list[str]:
    rng = random.Random(trajectory_id)
    ids = []
    for step in range(steps):
        cap = CapturedCompletion(
            id=new_id("cap"),
            trajectory_id=trajectory_id,
            agent_id="agent-7",
            step=step,
            model="agent:latest",
            upstream_model=f"wandb-artifact:///{ENTITY}/{PROJECT}/agent:step3",
            messages=[
                {"role": "system", "content": "You trade on Babylon's prediction markets."},
                {"role": "user", "content": f"Window {step}: markets are open. Decide."},
            ],
            choice=_choice(["BUY", "YES", "on", "market", str(40 + step), "at", "0.62"], rng),
            usage={"prompt_tokens": 42, "completion_tokens": 7},
            latency_ms=180.0 + step,
        )
        session.add(cap)
        ids.append(cap.id)
    await session.flush()
    return ids


async def seed_dataset(session: AsyncSession, *, groups: int = 8) -> Dataset:
    """A ready dataset with stats, rejected rows and groups of varied rewards."""
    rng = random.Random(3)
    dataset = Dataset(
        id=new_id("ds"),
        status="ready",
        source="pushed",
        params={"window_ids": ["w1", "w2"]},
        stats={
            "rows": {"read": groups * 4 + 5, "used": groups * 4, "ignored": 2, "rejected": 3},
            "rejected_by_reason": {"no_reward": 2, "invalid_json": 1},
            "groups": {
                "kept": groups,
                "dropped": 2,
                "dropped_by_reason": {"single_trajectory": 1, "equal_rewards": 1},
            },
            "reward": {"mean": 0.5, "std": 0.2, "min": 0.05, "max": 0.95},
            "trainable_turns": groups * 4,
            "context_only_turns": 3,
        },
        group_count=groups,
        trajectory_count=groups * 4,
        trainable_turns=groups * 4,
        finished_at=utcnow(),
    )
    session.add(dataset)
    await session.flush()
    for g in range(groups):
        rewards = [round(rng.uniform(0.05, 0.95), 3) for _ in range(4)]
        session.add(
            DatasetGroup(
                dataset_id=dataset.id,
                position=g,
                scenario_id=f"window-{g}",
                rewards=rewards,
                trajectories=[],
                trainable_turns=4,
            )
        )
    for reason, n in (("no_reward", 2), ("invalid_json", 1)):
        for i in range(n):
            session.add(
                DatasetRejection(
                    dataset_id=dataset.id,
                    trajectory_id=f"traj-rej-{reason}-{i}",
                    window_id="w1",
                    agent_id=f"agent-{i}",
                    reason=reason,
                    detail=f"{reason} in row {i}",
                )
            )
    await session.flush()
    return dataset


async def seed_many_captures(
    session: AsyncSession, count: int, *, per_trajectory: int = 10, batch: int = 10_000
) -> str:
    """`count` small captures, `per_trajectory` per trajectory id (bulk insert); returns one of
    the trajectory ids (the last)."""
    now = utcnow()
    rows: list[dict[str, Any]] = []
    trajectory_id = ""
    for i in range(count):
        trajectory_id = f"traj-{i // per_trajectory:08d}"
        rows.append(
            {
                "id": f"cap-{i:024x}",
                "created_at": now - dt.timedelta(seconds=count - i),
                "trajectory_id": trajectory_id,
                "agent_id": "agent-1",
                "step": i % per_trajectory,
                "model": "agent:latest",
                "upstream_model": "agent:step3",
                "messages": [{"role": "user", "content": "Decide."}],
                "choice": {
                    "index": 0,
                    "message": {"role": "assistant", "content": "BUY"},
                    "logprobs": {"content": [{"token": "BUY", "logprob": -0.2, "top_logprobs": []}]},
                },
            }
        )
        if len(rows) >= batch:
            await session.execute(sa.insert(CapturedCompletion), rows)
            rows = []
    if rows:
        await session.execute(sa.insert(CapturedCompletion), rows)
    await session.flush()
    return trajectory_id
