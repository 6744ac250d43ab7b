"""The fine-tuning jobs API through the official openai SDK (no worker running: jobs stay queued)."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
import sqlalchemy as sa

from app.jobs.models import FineTuningJob
from tests.fixtures.factories import make_dataset
from tests.fixtures.service import StartService

BASE = "OpenPipe/Qwen3-14B-Instruct"


async def test_create_returns_an_openai_job_object_that_is_queued_with_defaults(
    start_service: StartService,
) -> None:
    async with start_service(run_worker=False) as svc:
        ds = await make_dataset(svc.sessionmaker, groups=5)
        job = await svc.sdk.fine_tuning.jobs.create(
            model=BASE, training_file=ds.id, suffix="agent-x", seed=7, metadata={"team": "babylon"}
        )
        assert job.object == "fine_tuning.job"
        assert job.id.startswith("ftjob-")
        assert job.status == "queued"
        assert job.model == BASE
        assert job.training_file == ds.id
        assert job.seed == 7
        assert job.metadata == {"team": "babylon"}
        assert job.fine_tuned_model is None
        assert job.finished_at is None
        assert job.error is None
        hp = job.hyperparameters.model_dump()
        assert hp["batch_size"] == 4  # OpenAI's name for groups per step
        extra: dict[str, Any] = job.model_extra or {}
        assert extra["steps"] == {"completed": 0, "total": 2}  # 5 groups / 4 per step
        assert job.method is not None
        assert job.method.type == "reinforcement"
        assert job.integrations is not None
        assert job.integrations[0].wandb.name == "agent-x"
        again = await svc.sdk.fine_tuning.jobs.retrieve(job.id)
        assert again.id == job.id
        assert again.status == "queued"
        events = [e.message for e in (await svc.sdk.fine_tuning.jobs.list_events(job.id)).data]
        assert events[0].startswith("Job queued: 2 training steps")
        assert any("Validated training file" in m for m in events)


async def test_reinforcement_method_hyperparameters_are_applied_and_defaults_filled(
    start_service: StartService,
) -> None:
    async with start_service(run_worker=False) as svc:
        ds = await make_dataset(svc.sessionmaker, groups=3)
        job = await svc.sdk.fine_tuning.jobs.create(
            model=BASE,
            training_file=ds.id,
            method={
                "type": "reinforcement",
                "reinforcement": {
                    "hyperparameters": {
                        "learning_rate": 1e-5,
                        "batch_size": 1,
                        "n_epochs": 2,
                        "ppo": True,
                        "epsilon": 0.2,
                        "epsilon_high": 0.28,
                        "importance_sampling_level": "sequence",
                        "scale_rewards": False,
                        "advantage_balance": -0.5,
                        "max_negative_advantage_importance_sampling_weight": 2.0,
                        "mask_prob_ratio": True,
                        "precalculate_logprobs": True,
                    }
                },
            },
        )
        hp = job.hyperparameters.model_dump()
        assert hp["learning_rate"] == 1e-5
        assert hp["groups_per_step"] == 1
        assert hp["n_epochs"] == 2
        assert hp["ppo"] is True
        assert hp["epsilon_high"] == 0.28
        assert hp["importance_sampling_level"] == "sequence"
        assert hp["kimi_k2_tau"] is None  # not given: default
        assert (job.model_extra or {})["steps"]["total"] == 6  # 3 groups × 2 epochs


INVALID_HYPERPARAMETERS: list[tuple[dict[str, Any], str]] = [
    ({"learning_rate": -1}, "hyperparameters.learning_rate"),
    ({"learning_rate": 0.5}, "hyperparameters.learning_rate"),
    ({"groups_per_step": 0}, "hyperparameters.groups_per_step"),
    ({"batch_size": 2.5}, "hyperparameters.batch_size"),
    ({"n_epochs": True}, "hyperparameters.n_epochs"),
    ({"epsilon": 0.3, "epsilon_high": 0.2}, "hyperparameters"),
    ({"advantage_balance": 2}, "hyperparameters.advantage_balance"),
    ({"importance_sampling_level": "per_token"}, "hyperparameters.importance_sampling_level"),
    ({"ppo": "yes"}, "hyperparameters.ppo"),
    ({"kl_penalty_coef": 0.1}, "hyperparameters.kl_penalty_coef"),
]


async def test_invalid_hyperparameters_are_400_naming_the_field(start_service: StartService) -> None:
    async with start_service(run_worker=False) as svc:
        ds = await make_dataset(svc.sessionmaker)
        for hyperparameters, param in INVALID_HYPERPARAMETERS:
            with pytest.raises(openai.BadRequestError) as err:
                await svc.sdk.fine_tuning.jobs.create(
                    model=BASE,
                    training_file=ds.id,
                    hyperparameters=hyperparameters,  # type: ignore[arg-type]
                )
            body: Any = err.value.body
            assert (body["param"], body["code"]) == (param, "invalid_hyperparameters"), hyperparameters
            assert param.split(".")[-1] in body["message"]
        async with svc.sessionmaker() as session:
            assert await session.scalar(sa.select(sa.func.count()).select_from(FineTuningJob)) == 0


INVALID_CREATES: list[tuple[dict[str, Any], str, str]] = [
    ({"model": "Qwen/Qwen2.5-0.5B-Instruct"}, "model", "model_not_available"),
    ({"method": {"type": "supervised"}}, "method.type", "unsupported_method"),
    (
        {
            "hyperparameters": {"n_epochs": 1},
            "method": {"type": "reinforcement", "reinforcement": {"hyperparameters": {"n_epochs": 2}}},
        },
        "hyperparameters",
        "invalid_hyperparameters",
    ),
    ({"suffix": "has spaces"}, "suffix", "invalid_suffix"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_metadata"),
    ({"metadata": {"n": 3}}, "metadata.n", "invalid_metadata"),
    ({"validation_file": "file-abc"}, "validation_file", "unsupported_parameter"),
    (
        {"extra_body": {"webhook_url": "http://127.0.0.1:1/hook"}},
        "webhook_url",
        "webhooks_not_configured",
    ),
]


async def test_invalid_create_requests_are_400_with_param_and_code(start_service: StartService) -> None:
    async with start_service(run_worker=False) as svc:
        ds = await make_dataset(svc.sessionmaker)
        for kwargs, param, code in INVALID_CREATES:
            args: dict[str, Any] = {"model": BASE, "training_file": ds.id, **kwargs}
            with pytest.raises(openai.BadRequestError) as err:
                await svc.sdk.fine_tuning.jobs.create(**args)
            body: Any = err.value.body
            assert (body["param"], body["code"]) == (param, code), kwargs


async def test_training_data_must_exist_and_be_trainable_and_a_job_waits_for_one_being_built(
    start_service: StartService,
) -> None:
    async with start_service(run_worker=False) as svc:
        with pytest.raises(openai.NotFoundError) as missing:
            await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file="ds-doesnotexist")
        assert (missing.value.body or {})["param"] == "training_file"  # type: ignore[index]

        # a dataset still being built (a file uploaded a moment ago): the job waits for it
        building = await make_dataset(svc.sessionmaker, status="building")
        waiting = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=building.id)
        assert waiting.status == "validating_files"
        events = [e.message async for e in svc.sdk.fine_tuning.jobs.list_events(waiting.id)]
        assert any(f"dataset {building.id} is building" in m for m in events), events

        failed = await make_dataset(svc.sessionmaker, status="failed")
        with pytest.raises(openai.BadRequestError) as broken:
            await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=failed.id)
        assert (broken.value.body or {})["code"] == "training_file_failed"  # type: ignore[index]

        untrainable = await make_dataset(svc.sessionmaker, trainable=False)
        with pytest.raises(openai.BadRequestError) as empty:
            await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=untrainable.id)
        body: Any = empty.value.body
        assert body["code"] == "no_trainable_data"
        assert body["param"] == "training_file"
        # the message says how to get logprobs into the data
        assert "/v1/chat/completions" in body["message"]
        assert "metadata.trajectory_id" in body["message"]


async def test_list_pages_through_25_jobs_newest_first_without_gaps_or_repeats(
    start_service: StartService,
) -> None:
    async with start_service(run_worker=False) as svc:
        ds = await make_dataset(svc.sessionmaker, groups=2)
        created = [
            (
                await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id, metadata={"i": str(i)})
            ).id
            for i in range(25)
        ]
        first = await svc.sdk.fine_tuning.jobs.list(limit=10)
        assert len(first.data) == 10
        assert first.has_more is True
        assert [j.id for j in first.data] == created[::-1][:10]
        seen = [job.id async for job in await svc.sdk.fine_tuning.jobs.list(limit=10)]
        assert seen == created[::-1]
        last = await svc.sdk.fine_tuning.jobs.list(limit=10, after=created[5])
        assert [j.id for j in last.data] == created[:5][::-1]
        assert last.has_more is False
        with pytest.raises(openai.BadRequestError):
            await svc.sdk.fine_tuning.jobs.list(after="ftjob-unknown")


async def test_list_filters_by_metadata(start_service: StartService) -> None:
    async with start_service(run_worker=False) as svc:
        ds = await make_dataset(svc.sessionmaker, groups=2)
        a = await svc.sdk.fine_tuning.jobs.create(
            model=BASE, training_file=ds.id, metadata={"team": "red", "env": "prod"}
        )
        b = await svc.sdk.fine_tuning.jobs.create(
            model=BASE, training_file=ds.id, metadata={"team": "blue", "env": "prod"}
        )
        c = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id)
        red = await svc.sdk.fine_tuning.jobs.list(metadata={"team": "red"})
        assert [j.id for j in red.data] == [a.id]
        prod = await svc.sdk.fine_tuning.jobs.list(metadata={"env": "prod"})
        assert {j.id for j in prod.data} == {a.id, b.id}
        both = await svc.sdk.fine_tuning.jobs.list(metadata={"env": "prod", "team": "blue"})
        assert [j.id for j in both.data] == [b.id]
        response = await svc.http.get("/v1/fine_tuning/jobs", params={"metadata": "null"})
        assert [j["id"] for j in response.json()["data"]] == [c.id]


async def test_same_idempotency_key_returns_the_same_job(start_service: StartService) -> None:
    async with start_service(run_worker=False) as svc:
        ds = await make_dataset(svc.sessionmaker)
        headers = {"Idempotency-Key": "retry-42"}
        one = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id, extra_headers=headers)
        two = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id, extra_headers=headers)
        assert one.id == two.id
        with pytest.raises(openai.ConflictError) as err:
            await svc.sdk.fine_tuning.jobs.create(
                model=BASE, training_file=ds.id, suffix="other", extra_headers=headers
            )
        assert (err.value.body or {})["code"] == "idempotency_key_reused"  # type: ignore[index]


async def test_ten_concurrent_creates_with_one_idempotency_key_make_one_job(
    start_service: StartService,
) -> None:
    async with start_service(run_worker=False) as svc:
        ds = await make_dataset(svc.sessionmaker)
        headers = {"Idempotency-Key": "burst-1"}
        jobs = await asyncio.gather(
            *(
                svc.sdk.fine_tuning.jobs.create(
                    model=BASE, training_file=ds.id, suffix="burst", extra_headers=headers
                )
                for _ in range(10)
            )
        )
        assert len({j.id for j in jobs}) == 1
        async with svc.sessionmaker() as session:
            assert await session.scalar(sa.select(sa.func.count()).select_from(FineTuningJob)) == 1


async def test_cancel_of_a_queued_job_is_immediate_and_recorded(start_service: StartService) -> None:
    async with start_service(run_worker=False) as svc:
        ds = await make_dataset(svc.sessionmaker)
        job = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id)
        cancelled = await svc.sdk.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled"
        assert cancelled.finished_at is not None
        events = (await svc.sdk.fine_tuning.jobs.list_events(job.id)).data
        assert events[0].message == "Job cancelled before it started"
        assert (await svc.sdk.fine_tuning.jobs.cancel(job.id)).status == "cancelled"  # idempotent


async def test_unknown_job_is_404_on_every_route(start_service: StartService) -> None:
    async with start_service(run_worker=False) as svc:
        for call in (
            svc.sdk.fine_tuning.jobs.retrieve("ftjob-nope"),
            svc.sdk.fine_tuning.jobs.cancel("ftjob-nope"),
            svc.sdk.fine_tuning.jobs.list_events("ftjob-nope"),
            svc.sdk.fine_tuning.jobs.checkpoints.list("ftjob-nope"),
        ):
            with pytest.raises(openai.NotFoundError):
                await call


async def test_event_pages_are_newest_first_with_cursor(start_service: StartService) -> None:
    async with start_service(run_worker=False) as svc:
        ds = await make_dataset(svc.sessionmaker)
        job = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id)
        await svc.sdk.fine_tuning.jobs.cancel(job.id)
        everything = [e.id async for e in await svc.sdk.fine_tuning.jobs.list_events(job.id, limit=1)]
        assert len(everything) == 4
        page = await svc.sdk.fine_tuning.jobs.list_events(job.id, limit=2, after=everything[1])
        assert [e.id for e in page.data] == everything[2:]


async def test_list_filters_by_status_and_model(start_service: StartService) -> None:
    async with start_service(run_worker=False) as svc:
        ds = await make_dataset(svc.sessionmaker, groups=2)
        a = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id, suffix="line-a")
        b = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id, suffix="line-b")
        await svc.sdk.fine_tuning.jobs.cancel(b.id)
        cancelled = await svc.sdk.fine_tuning.jobs.list(extra_query={"status": "cancelled"})
        assert [j.id for j in cancelled.data] == [b.id]
        line_a = await svc.sdk.fine_tuning.jobs.list(extra_query={"model": "line-a"})
        assert [j.id for j in line_a.data] == [a.id]
        base = await svc.sdk.fine_tuning.jobs.list(extra_query={"model": BASE})
        assert {j.id for j in base.data} == {a.id, b.id}
        with pytest.raises(openai.BadRequestError) as err:
            await svc.sdk.fine_tuning.jobs.list(extra_query={"status": "done"})
        assert (err.value.body or {})["param"] == "status"  # type: ignore[index]
