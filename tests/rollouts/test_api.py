"""The rollout routes: validation (400 naming the field), one running rollout per alias (409),
lists, cancel, expiry and the error-rate roll-back."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from app.config import Settings
from app.datasets.models import Dataset
from app.datasets.schemas import DatasetCreate
from app.datasets.sources import register_source, unregister_source
from app.db import utcnow
from app.errors import StoredError
from app.gateway.models import CapturedCompletion, GatewayRequest
from app.ids import new_id
from app.registry.models import Rollout
from app.registry.policy import retention_candidates
from app.rollouts.service import evaluate_rollout
from app.scoring.models import TrajectoryScore
from app.state import app_state
from tests.rollouts.conftest import RolloutService

URL = "/v1/models/agent/rollouts"


def _body(**changes: Any) -> dict[str, Any]:
    return {"alias": "production", "candidate": "step2", **changes}


INVALID: list[tuple[Any, str | None]] = [
    ({"candidate": "step2"}, "alias"),
    ({"alias": "production"}, "candidate"),
    (_body(share=1.5), "share"),
    (_body(share=0), "share"),
    (_body(share="half"), "share"),
    (_body(confidence=1.0), "confidence"),
    (_body(min_trajectories=2), "min_trajectories"),
    (_body(max_duration=-5), "max_duration"),
    (_body(metric=""), "metric"),
    (_body(colour="blue"), "colour"),
    (_body(candidate="step1"), "candidate"),  # what production serves already
    (_body(alias="staging"), "alias"),  # no such alias
    ([1, 2], None),
]


async def test_invalid_rollouts_are_400_naming_the_field(rollout_service: RolloutService) -> None:
    for body, param in INVALID:
        response = await rollout_service.http.post(URL, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, body
    assert (await rollout_service.http.get(URL)).json()["data"] == []


async def test_unknown_model_or_candidate_is_404(rollout_service: RolloutService) -> None:
    assert (await rollout_service.http.post("/v1/models/nobody/rollouts", json=_body())).status_code == 404
    missing = await rollout_service.http.post(URL, json=_body(candidate="step9"))
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "candidate"


async def test_one_running_rollout_per_alias(rollout_service: RolloutService) -> None:
    http = rollout_service.http
    first = await http.post(URL, json=_body())
    assert first.status_code == 200
    second = await http.post(URL, json=_body(candidate="step3"))
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "rollout_running"
    cancelled = await http.post(f"{URL}/{first.json()['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    again = await http.post(f"{URL}/{first.json()['id']}/cancel")
    assert again.status_code == 409
    assert (await http.post(URL, json=_body(candidate="step3"))).status_code == 200


async def test_rollouts_list_newest_first_with_an_after_cursor(rollout_service: RolloutService) -> None:
    http = rollout_service.http
    ids = []
    for candidate in ("step2", "step3", "step2"):
        created = (await http.post(URL, json=_body(candidate=candidate))).json()
        ids.append(created["id"])
        await http.post(f"{URL}/{created['id']}/cancel")
    page = (await http.get(URL, params={"limit": 2})).json()
    assert [r["id"] for r in page["data"]] == ids[::-1][:2]
    assert page["has_more"]
    rest = (await http.get(URL, params={"limit": 2, "after": page["last_id"]})).json()
    assert [r["id"] for r in rest["data"]] == [ids[0]]
    assert not rest["has_more"]
    assert (await http.get(URL, params={"after": "rollout-nope"})).json()["error"]["code"] == "invalid_cursor"
    assert (await http.get(URL, params={"state": "sideways"})).status_code == 400
    assert (await http.get(URL, params={"state": "running"})).json()["data"] == []
    assert (await http.get(f"{URL}/rollout-nope")).status_code == 404


async def test_an_undecided_rollout_expires_after_max_duration(rollout_service: RolloutService) -> None:
    svc = rollout_service
    created = (await svc.http.post(URL, json=_body(max_duration=60))).json()
    async with app_state(svc.app).sessionmaker() as session:
        rollout = await session.get(Rollout, created["id"])
        assert rollout is not None
        settings = app_state(svc.app).settings
        await evaluate_rollout(session, settings, rollout, now=utcnow())
        assert rollout.state == "running"
        await evaluate_rollout(session, settings, rollout, now=utcnow() + dt.timedelta(seconds=61))
        await session.commit()
    body = (await svc.http.get(f"{URL}/{created['id']}")).json()
    assert body["state"] == "expired"
    assert "max_duration" in body["reason"]
    events = (await svc.http.get(f"{URL}/{created['id']}/events")).json()["data"]
    assert events[-1]["type"] == "rollout.expired"


async def test_a_candidate_failing_more_often_than_the_baseline_is_rolled_back(
    rollout_service: RolloutService,
) -> None:
    svc = rollout_service
    created = (await svc.http.post(URL, json=_body())).json()
    now = utcnow()

    def row(served: int, status: int) -> GatewayRequest:
        return GatewayRequest(
            created_at=now,
            route="chat.completions",
            model_requested="agent:production",
            model_served=svc.agent.artifact(served),
            status_code=status,
            latency_ms=1.0,
            overhead_ms=0.1,
        )

    async with app_state(svc.app).sessionmaker() as session:
        session.add_all([row(1, 200) for _ in range(30)] + [row(2, 200) for _ in range(20)])
        session.add_all([row(2, 502) for _ in range(10)] + [row(2, 499) for _ in range(5)])
        await session.commit()
        rollout = await session.get(Rollout, created["id"])
        assert rollout is not None
        await evaluate_rollout(session, app_state(svc.app).settings, rollout)
        await session.commit()
    body = (await svc.http.get(f"{URL}/{created['id']}")).json()
    assert body["state"] == "rolled_back"
    assert "error rate" in body["reason"]
    assert (body["candidate_arm"]["requests"], body["candidate_arm"]["errors"]) == (35, 10)
    assert (body["baseline_arm"]["requests"], body["baseline_arm"]["errors"]) == (30, 0)


async def test_a_scorer_metric_reads_persisted_scores_joined_to_the_serving_checkpoint(
    rollout_service: RolloutService,
) -> None:
    """Scores written by dataset builds (e.g. the game's, read from its database) count as the
    reward; a trajectory served by both checkpoints is left out; the newest scorer row wins."""
    svc = rollout_service
    created = (await svc.http.post(URL, json=_body(metric="pnl", min_trajectories=5))).json()
    now = utcnow()
    captures, scores = [], []
    for i in range(40):
        candidate = i % 2 == 0
        tid = f"game-{i}"
        captures.append(_capture(tid, svc.agent.artifact(2 if candidate else 1), now))
        # the first scorer version said the opposite; the newer row decides
        scores.append(_score(tid, 0.0 if candidate else 1.0, "1"))
        scores.append(_score(tid, 1.0 if candidate else 0.2 + 0.01 * i, "2"))
    captures.append(_capture("game-mixed", svc.agent.artifact(1), now))
    captures.append(_capture("game-mixed", svc.agent.artifact(2), now))
    scores.append(_score("game-mixed", -100.0, "2"))
    async with app_state(svc.app).sessionmaker() as session:
        session.add_all(captures)
        await session.flush()
        session.add_all(scores)
        await session.commit()
        rollout = await session.get(Rollout, created["id"])
        assert rollout is not None
        await evaluate_rollout(session, app_state(svc.app).settings, rollout)
        await session.commit()
    body = (await svc.http.get(f"{URL}/{created['id']}")).json()
    assert body["state"] == "promoted", body["reason"]
    assert (body["candidate_arm"]["n"], body["baseline_arm"]["n"]) == (20, 20)
    assert body["mixed_trajectories"] == 1
    assert body["candidate_arm"]["mean"] == 1.0


def _capture(tid: str, served: str, now: dt.datetime) -> CapturedCompletion:
    return CapturedCompletion(
        id=new_id("cap"),
        created_at=now,
        trajectory_id=tid,
        model="agent:production",
        upstream_model=served,
        messages=[{"role": "user", "content": "move?"}],
        choice={"index": 0, "message": {"role": "assistant", "content": "win"}},
    )


def _score(tid: str, value: float, version: str) -> TrajectoryScore:
    return TrajectoryScore(
        trajectory_id=tid, source="babylon", scorer="pnl", scorer_version=version, score=value
    )


async def test_retention_keeps_the_candidate_of_a_running_rollout(rollout_service: RolloutService) -> None:
    svc = rollout_service
    settings = app_state(svc.app).settings
    keep_none = settings.model_copy(
        update={"training": settings.training.model_copy(update={"keep_last_checkpoints": 0})}
    )
    async with app_state(svc.app).sessionmaker() as session:
        before = {c.step for c in await retention_candidates(session, keep_none, svc.agent.model)}
    assert 2 in before  # neither latest, best nor aliased: retention would delete it
    created = (await svc.http.post(URL, json=_body())).json()
    async with app_state(svc.app).sessionmaker() as session:
        during = {c.step for c in await retention_candidates(session, keep_none, svc.agent.model)}
    assert 2 not in during
    await svc.http.post(f"{URL}/{created['id']}/cancel")
    async with app_state(svc.app).sessionmaker() as session:
        after = {c.step for c in await retention_candidates(session, keep_none, svc.agent.model)}
    assert 2 in after


class GameSource:
    """A game's source (registered as the default, as an installed game's is): never built here."""

    name = "tinygame"
    default_scorer: str | None = "pnl"

    def check_params(self, params: DatasetCreate) -> None:
        pass

    def prepare(self, settings: Settings, params: DatasetCreate) -> dict[str, Any]:
        return {}

    def build(self, *args: Any) -> Any:
        raise AssertionError("no worker runs in these tests")

    def describe_error(self, exc: BaseException, settings: Settings) -> StoredError | None:
        return None


async def test_a_scorer_metric_with_a_game_has_the_arms_unscored_trajectories_scored_by_its_source(
    rollout_service: RolloutService,
) -> None:
    svc = rollout_service
    register_source(GameSource(), default=True)
    try:
        created = (await svc.http.post(URL, json=_body(metric="pnl", min_trajectories=5))).json()
        now = utcnow()
        async with app_state(svc.app).sessionmaker() as session:
            session.add_all(
                [
                    _capture("game-a", svc.agent.artifact(1), now),
                    _capture("game-b", svc.agent.artifact(2), now),
                    _capture("game-c", svc.agent.artifact(2), now),
                ]
            )
            await session.flush()
            session.add(_score("game-c", 0.5, "2"))  # already scored: not asked again
            await session.commit()
            rollout = await session.get(Rollout, created["id"])
            assert rollout is not None
            settings = app_state(svc.app).settings
            await evaluate_rollout(session, settings, rollout)
            await evaluate_rollout(session, settings, rollout)  # the first build is still queued
            await session.commit()
            datasets = (await session.scalars(sa.select(Dataset))).all()
        assert len(datasets) == 1
        params = datasets[0].params
        assert datasets[0].source == "tinygame"
        assert (params["trajectory_ids"], params["scorer"], params["persist_scores"]) == (
            ["game-a", "game-b"],
            "pnl",
            "all",
        )
    finally:
        unregister_source("tinygame")


async def test_a_late_evaluation_never_overwrites_a_decision_made_meanwhile(
    rollout_service: RolloutService,
) -> None:
    svc = rollout_service
    created = (await svc.http.post(URL, json=_body())).json()
    maker = app_state(svc.app).sessionmaker
    async with maker() as stale:
        rollout = await stale.get(Rollout, created["id"])
        assert rollout is not None
        assert rollout.state == "running"
        await stale.commit()  # the row object stays as read (SQLite: no transaction held meanwhile)
        assert (await svc.http.post(f"{URL}/{created['id']}/cancel")).status_code == 200
        await evaluate_rollout(stale, app_state(svc.app).settings, rollout)  # still "running" to it
        await stale.commit()
    body = (await svc.http.get(f"{URL}/{created['id']}")).json()
    assert (body["state"], body["reason"]) == ("cancelled", "cancelled by a request")
