"""Jobs run by the in-process worker through real openpipe-art against the W&B emulator (HTTP).

The step protocol itself (every transition, fault and cancel point) is unit-tested against an
in-memory W&B in tests/training; these check the same protocol end to end over HTTP with ART's
client: what goes over the wire, and the emulator's own view of it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from app.jobs.models import JobStep
from app.registry.models import Checkpoint, ModelAlias, ServedModel
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.factories import make_dataset
from tests.fixtures.service import StartService, wait_for_job, wait_until

BASE = "OpenPipe/Qwen3-14B-Instruct"


async def test_job_trains_a_dataset_to_succeeded_with_one_post_and_checkpoint_per_step(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    async with start_service() as svc:
        ds = await make_dataset(svc.sessionmaker, groups=5, per_group=3)
        job = await svc.sdk.fine_tuning.jobs.create(
            model=BASE,
            training_file=ds.id,
            suffix="agent-a",
            hyperparameters={"batch_size": 2, "learning_rate": 2e-5},  # type: ignore[typeddict-unknown-key]
        )
        done = await wait_for_job(svc.sdk, job.id)
        assert done.status == "succeeded", done.error
        assert done.finished_at is not None
        # 5 groups, 2 per step → 3 steps → 3 POSTs and checkpoints 1..3 on W&B
        assert emulator.training_posts("agent-a") == 3
        assert [c["step"] for c in emulator.checkpoints("agent-a")] == [1, 2, 3]
        served = f"wandb-artifact:///{emulator.entity}/babylon-rl/agent-a:step3"
        assert done.fine_tuned_model == served

        ckpts = (await svc.sdk.fine_tuning.jobs.checkpoints.list(job.id)).data
        assert [c.step_number for c in ckpts] == [3, 2, 1]
        assert ckpts[0].fine_tuned_model_checkpoint == served
        assert ckpts[0].fine_tuning_job_id == job.id
        assert ckpts[0].metrics.train_loss is not None
        extra: dict[str, Any] = ckpts[0].metrics.model_extra or {}
        assert extra["num_groups"] == 1.0  # the last step got the 5th group
        assert "reward_mean" in extra
        assert (ckpts[0].model_extra or {})["origin"] == "step"

        events = [e async for e in await svc.sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
        metrics = [e for e in events if e.type == "metrics"]
        assert len(metrics) == 3 * 2  # emulator: 2 gradient steps per training job
        assert all(isinstance(e.data, dict) and "loss" in e.data for e in metrics)
        messages = [e.message for e in reversed(events) if e.type == "message"]
        assert messages[-1] == f"The job has successfully completed: {served}"
        assert any(m.startswith("Fine-tuning job started") for m in messages)
        assert sum(m.startswith("Step ") and " done: checkpoint " in m for m in messages) == 3

        # what went over the wire: Choice entries with logprobs, ART's experimental config
        sent = emulator.jobs("agent-a")
        assert sent[0]["experimental_config"]["learning_rate"] == 2e-5
        first_traj = sent[0]["trajectory_groups"][0]["trajectories"][0]
        assert first_traj["messages_and_choices"][-1]["logprobs"]["content"]
        assert sum(len(j["trajectory_groups"]) for j in sent) == 5

        async with svc.sessionmaker() as session:
            line = await session.scalar(sa.select(ServedModel).where(ServedModel.name == "agent-a"))
            assert line is not None
            assert line.remote_id
            aliases = {
                a.alias: a.checkpoint_id
                for a in (
                    await session.scalars(sa.select(ModelAlias).where(ModelAlias.model_id == line.id))
                ).all()
            }
            latest = await session.scalar(
                sa.select(Checkpoint).where(Checkpoint.model_id == line.id, Checkpoint.step == 3)
            )
            assert latest is not None
            assert aliases["latest"] == latest.id
            assert "best" in aliases
            steps = (await session.scalars(sa.select(JobStep).where(JobStep.job_id == job.id))).all()
            assert sorted(s.status for s in steps) == ["succeeded"] * 3
            assert all(s.remote_job_id and s.last_event_id for s in steps)
            assert [s.base_step for s in sorted(steps, key=lambda s: s.number)] == [0, 1, 2]


async def test_retention_deletes_checkpoints_on_wandb_keeping_latest_best_and_last_k(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    # reward_mean grows with the group position, so the last step is also the best one
    async with start_service(training={"keep_last_checkpoints": 1}) as svc:
        ds = await make_dataset(svc.sessionmaker, groups=4)
        job = await svc.sdk.fine_tuning.jobs.create(
            model=BASE,
            training_file=ds.id,
            suffix="kept",
            hyperparameters={"batch_size": 1},  # type: ignore[typeddict-unknown-key]
        )
        await wait_for_job(svc.sdk, job.id)
        # latest (4), the last 1 before it (3), best by reward_mean
        async with svc.sessionmaker() as session:
            rows = (await session.scalars(sa.select(Checkpoint).order_by(Checkpoint.step))).all()
        live = [c.step for c in rows if c.deleted_at is None]
        deleted = [c.step for c in rows if c.deleted_at is not None]
        assert 4 in live
        assert 3 in live
        assert len(live) <= 3
        assert deleted
        assert set(deleted) | set(live) == {1, 2, 3, 4}
        assert [c["step"] for c in emulator.checkpoints("kept")] == live
        listed = [c.step_number for c in (await svc.sdk.fine_tuning.jobs.checkpoints.list(job.id)).data]
        assert sorted(listed) == live
        events = [e.message async for e in await svc.sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert any(m.startswith("Retention: deleted checkpoint steps") for m in events)


async def test_a_cancel_while_wandb_trains_ends_the_job_at_once_and_the_late_checkpoint_is_kept(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    emulator.set_pace(60)  # a step takes minutes: it is still training when the cancel comes
    async with start_service(worker={"late_checkpoint_interval_s": 0.2}) as svc:
        ds = await make_dataset(svc.sessionmaker, groups=3)
        job = await svc.sdk.fine_tuning.jobs.create(
            model=BASE,
            training_file=ds.id,
            suffix="stopper",
            hyperparameters={"batch_size": 1},  # type: ignore[typeddict-unknown-key]
        )

        async def training() -> bool:
            async with svc.sessionmaker() as session:
                step = await session.scalar(sa.select(JobStep).where(JobStep.job_id == job.id))
            return step is not None and step.status == "submitted"

        await wait_until(training, what="step 1 training on W&B")
        requested = await svc.sdk.fine_tuning.jobs.cancel(job.id)
        assert requested.status == "running"
        assert (requested.model_extra or {})["cancel_requested"] is True
        done = await wait_for_job(svc.sdk, job.id, timeout_s=5)
        assert done.status == "cancelled"
        assert done.error is None
        assert done.fine_tuned_model is None
        assert emulator.training_posts("stopper") == 1
        events = [e.message for e in (await svc.sdk.fine_tuning.jobs.list_events(job.id)).data]
        assert "it may still finish" in events[0]

        emulator.advance_time(600)  # W&B has no cancel endpoint: the remote job finishes anyway
        assert [c["step"] for c in emulator.checkpoints("stopper")] == [1]

        async def recorded() -> bool:
            return bool((await svc.sdk.fine_tuning.jobs.checkpoints.list(job.id)).data)

        await wait_until(recorded, what="the late checkpoint recorded")
        (ckpt,) = (await svc.sdk.fine_tuning.jobs.checkpoints.list(job.id)).data
        assert (ckpt.step_number, (ckpt.model_extra or {})["origin"]) == (1, "late")
        again = await svc.sdk.fine_tuning.jobs.retrieve(job.id)
        assert (again.status, again.fine_tuned_model) == ("cancelled", None)


async def test_rl_hyperparameters_reach_wandb_as_arts_experimental_config(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    async with start_service() as svc:
        ds = await make_dataset(svc.sessionmaker, groups=1)
        job = await svc.sdk.fine_tuning.jobs.create(
            model=BASE,
            training_file=ds.id,
            suffix="tuned",
            method={
                "type": "reinforcement",
                "reinforcement": {
                    "hyperparameters": {  # type: ignore[typeddict-unknown-key]
                        "learning_rate": 3e-6,
                        "ppo": True,
                        "epsilon": 0.2,
                        "epsilon_high": 0.3,
                        "advantage_balance": 0.25,
                        "scale_rewards": False,
                        "importance_sampling_level": "sequence",
                        "max_negative_advantage_importance_sampling_weight": 5.0,
                        "mask_prob_ratio": True,
                        "precalculate_logprobs": True,
                        "kimi_k2_tau": 0.5,
                    }
                },
            },
        )
        assert (await wait_for_job(svc.sdk, job.id)).status == "succeeded"
    (sent,) = emulator.jobs("tuned")
    assert sent["experimental_config"] == {
        "learning_rate": 3e-6,
        "ppo": True,
        "epsilon": 0.2,
        "epsilon_high": 0.3,
        "advantage_balance": 0.25,
        "scale_rewards": False,
        "importance_sampling_level": "sequence",
        "max_negative_advantage_importance_sampling_weight": 5.0,
        "mask_prob_ratio": True,
        "precalculate_logprobs": True,
        "kimi_k2_tau": 0.5,
    }
