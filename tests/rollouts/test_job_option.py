"""Jobs opt in with `method.reinforcement.rollout`: a succeeded job rolls its final checkpoint
out on the alias instead of it being handed over at once; the worker evaluates (and expires)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.factories import make_dataset
from tests.fixtures.gateway import seed_model
from tests.fixtures.service import StartService, wait_for_job, wait_until

BASE = "OpenPipe/Qwen3-14B-Instruct"


def _method(rollout: Any) -> dict[str, Any]:
    return {"type": "reinforcement", "reinforcement": {"rollout": rollout}}


@pytest.mark.parametrize(
    ("rollout", "param"),
    [
        ({"alias": "latest"}, "method.reinforcement.rollout.alias"),
        ({"alias": "production", "candidate": "step1"}, "method.reinforcement.rollout.candidate"),
        ({"alias": "production", "share": 2}, "method.reinforcement.rollout.share"),
        ({"alias": "production", "speed": 2}, "method.reinforcement.rollout.speed"),
    ],
)
async def test_an_invalid_rollout_option_is_400_naming_the_field(
    client: httpx.AsyncClient, rollout: Any, param: str
) -> None:
    response = await client.post(
        "/v1/fine_tuning/jobs", json={"model": BASE, "training_file": "file-x", "method": _method(rollout)}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_a_succeeded_job_starts_a_rollout_of_its_final_checkpoint_which_the_worker_expires(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    async with start_service(rollouts={"eval_interval_s": 0.1}) as svc:
        # the line exists with `production` at step 1; the job continues it
        line = await seed_model(svc.app, emulator, "agent-r", steps=(1,), aliases={"production": 1})

        option = {"alias": "production", "share": 0.5, "min_trajectories": 5, "max_duration": 1}
        second = await svc.sdk.fine_tuning.jobs.create(
            model=BASE,
            training_file=(await make_dataset(svc.sessionmaker, groups=1)).id,
            suffix="agent-r",
            method=_method(option),  # type: ignore[arg-type]  # the service's extension of method
        )
        done = await wait_for_job(svc.sdk, second.id)
        assert done.status == "succeeded", done.error

        rollouts = (await svc.http.get("/v1/models/agent-r/rollouts")).json()["data"]
        assert len(rollouts) == 1
        rollout = rollouts[0]
        assert rollout["job_id"] == second.id
        assert rollout["candidate"]["served_model"] == done.fine_tuned_model
        assert rollout["baseline"]["served_model"] == line.artifact(1)
        assert (rollout["alias"], rollout["share"], rollout["min_trajectories"]) == ("production", 0.5, 5)
        events = [e.message async for e in await svc.sdk.fine_tuning.jobs.list_events(second.id, limit=50)]
        assert any(m.startswith(f"Rollout {rollout['id']} started") for m in events)

        async def expired() -> bool:
            body = (await svc.http.get(f"/v1/models/agent-r/rollouts/{rollout['id']}")).json()
            return bool(body["state"] == "expired")

        await wait_until(expired, timeout_s=20, what="the worker expires the rollout")
        production = (await svc.http.get("/v1/models/agent-r:production")).json()
        assert production["served_model"] == line.artifact(1)
