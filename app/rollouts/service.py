"""Rollouts: attributing rewards to the checkpoint that served them, deciding, acting.

Attribution: the gateway captures every call that carries `metadata.trajectory_id` with the
concrete checkpoint that served it (`captured_completions.upstream_model`, also in the
`x-gateway-served-model` header). A trajectory counts for an arm when every captured call it
made through the rollout's alias since the rollout started was served by that arm's checkpoint.
Its reward is the metric: `reward` is the pushed trajectory's reward (`/v1/trajectories`); any
other metric names a scorer whose persisted scores (`trajectory_scores`, written by dataset
builds of pushed, uploaded or game trajectories) are used; with a game installed, the
evaluation has the game's source score the arms' unscored trajectories from its database
(`request_game_scores`: a dataset build, the sources' and scorers' own path). Observations are ordered by when
their reward arrived, so each evaluation sees the previous one's sequence extended: what the
confidence sequence (app/rollouts/stats.py) needs to stay valid across looks. A known limit:
when one arm's rewards arrive systematically later (its games last longer), the early part of
the sequence holds fewer of its trajectories than `share` says, which biases the interval
until the late ones arrive; a trajectory re-scored by a newer scorer version moves to the
time of its new score.

Decisions (each an event, a webhook `rollout.<state>` and a state change, applied once even
when several workers evaluate): promote (the alias moves to the candidate; the game's hand-off
of the candidate's job runs now), roll back (the alias stays), expire, cancel. Functions that
take a session flush and never commit.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.datasets.models import Dataset, DatasetStatus
from app.datasets.schemas import DatasetCreate
from app.datasets.service import create_dataset
from app.datasets.sources import PUSHED, default_source
from app.db import utcnow
from app.errors import AppError, BadRequest, Conflict
from app.gateway.models import CapturedCompletion, GatewayRequest
from app.jobs import handoff, webhooks
from app.jobs.models import FineTuningJob
from app.registry.models import Checkpoint, Rollout, RolloutEvent, RolloutState, ServedModel
from app.registry.policy import BestRule
from app.registry.rollouts import (
    add_rollout_event,
    get_rollout,
    list_model_rollouts,
    list_rollout_events,
    parse_rollout_options,
    rollout_checkpoints,
    start_rollout,
)
from app.registry.service import ARTIFACT_PREFIX, find_model_line, set_alias
from app.rollouts.stats import ErrorCounts, Evaluation, Verdict, error_rate_worse, evaluate_rewards
from app.scoring.models import TrajectoryScore
from app.trajectories.models import PushedTrajectory

logger = logging.getLogger(__name__)

REWARD_METRIC = "reward"
CHUNK = 1000
# statuses that are the upstream's or the gateway's fault (the client's own 4xx are not errors
# of the checkpoint; 499 is a client that went away)
ERROR_STATUS = 500


def alias_names(model: ServedModel, alias: str) -> list[str]:
    """Every name a caller may request that means `alias` of `model` (app/registry/resolution.py)."""
    full = f"{ARTIFACT_PREFIX}{model.entity}/{model.project}/{model.name}"
    names = [f"{model.name}:{alias}", f"{full}:{alias}"]
    if alias == "latest":
        names += [model.name, full]
    return names


@dataclass(frozen=True, slots=True)
class Evidence:
    observations: list[tuple[bool, float]]
    candidate_errors: ErrorCounts
    baseline_errors: ErrorCounts
    mixed: int  # trajectories served by both arms (left out)
    unscored: list[str]  # served by one arm, no reward yet


async def _served_by(
    session: AsyncSession, rollout: Rollout, names: list[str], artifacts: tuple[str, str]
) -> tuple[dict[str, bool], int]:
    rows = await session.execute(
        sa.select(CapturedCompletion.trajectory_id, CapturedCompletion.upstream_model)
        .where(
            CapturedCompletion.created_at >= rollout.created_at,
            CapturedCompletion.model.in_(names),
            CapturedCompletion.upstream_model.in_(artifacts),
        )
        .distinct()
    )
    arms: dict[str, set[bool]] = {}
    for trajectory_id, upstream in rows.all():
        arms.setdefault(trajectory_id, set()).add(upstream == artifacts[0])
    single = {tid: next(iter(seen)) for tid, seen in arms.items() if len(seen) == 1}
    return single, len(arms) - len(single)


async def _rewards(
    session: AsyncSession, metric: str, trajectory_ids: Sequence[str]
) -> list[tuple[str, float]]:
    """(trajectory id, reward) in the order the rewards arrived."""
    found: list[tuple[Any, Any, str, float]] = []
    for i in range(0, len(trajectory_ids), CHUNK):
        chunk = list(trajectory_ids[i : i + CHUNK])
        if metric == REWARD_METRIC:
            rows = await session.execute(
                sa.select(
                    PushedTrajectory.created_at,
                    PushedTrajectory.id,
                    PushedTrajectory.trajectory_id,
                    PushedTrajectory.reward,
                ).where(PushedTrajectory.trajectory_id.in_(chunk))
            )
            found.extend((a, b, c, float(d)) for a, b, c, d in rows.all())
        else:
            rows = await session.execute(
                sa.select(
                    TrajectoryScore.created_at,
                    TrajectoryScore.id,
                    TrajectoryScore.trajectory_id,
                    TrajectoryScore.score,
                ).where(TrajectoryScore.scorer == metric, TrajectoryScore.trajectory_id.in_(chunk))
            )
            latest: dict[str, tuple[Any, Any, str, float]] = {}
            for a, b, c, d in rows.all():  # several scorer versions: the newest row counts
                if c not in latest or b > latest[c][1]:
                    latest[c] = (a, b, c, float(d))
            found.extend(latest.values())
    found.sort(key=lambda row: (row[0], str(row[1])))
    return [(tid, reward) for _, _, tid, reward in found]


async def _errors(
    session: AsyncSession, rollout: Rollout, names: list[str], artifacts: tuple[str, str]
) -> tuple[ErrorCounts, ErrorCounts]:
    is_error = sa.and_(GatewayRequest.status_code >= ERROR_STATUS, GatewayRequest.status_code != 499)
    rows = await session.execute(
        sa.select(
            GatewayRequest.model_served,
            sa.func.count(),
            sa.func.sum(sa.case((is_error, 1), else_=0)),
        )
        .where(
            GatewayRequest.created_at >= rollout.created_at,
            GatewayRequest.model_requested.in_(names),
            GatewayRequest.model_served.in_(artifacts),
        )
        .group_by(GatewayRequest.model_served)
    )
    counts = {served: ErrorCounts(int(total), int(errors or 0)) for served, total, errors in rows.all()}
    empty = ErrorCounts(0, 0)
    return counts.get(artifacts[0], empty), counts.get(artifacts[1], empty)


async def gather_evidence(
    session: AsyncSession, rollout: Rollout, model: ServedModel, candidate: Checkpoint, baseline: Checkpoint
) -> Evidence:
    names = alias_names(model, rollout.alias)
    artifacts = (candidate.artifact_name, baseline.artifact_name)
    served, mixed = await _served_by(session, rollout, names, artifacts)
    rewards = await _rewards(session, rollout.metric, sorted(served))
    observations = [(served[tid], reward) for tid, reward in rewards]
    candidate_errors, baseline_errors = await _errors(session, rollout, names, artifacts)
    rewarded = {tid for tid, _ in rewards}
    unscored = sorted(tid for tid in served if tid not in rewarded)
    return Evidence(observations, candidate_errors, baseline_errors, mixed, unscored)


MAX_SCORE_REQUEST = 100_000


async def request_game_scores(
    session: AsyncSession, settings: Settings, rollout: Rollout, unscored: list[str], now: dt.datetime
) -> Dataset | None:
    """A rollout on a scorer metric, with a game installed: have the game's source read the
    arms' unscored trajectories from its database and score them, through a dataset build
    selecting those ids that persists every score (the scores the next evaluation reads). One
    build at a time, at most every ROLLOUTS__GAME_SCORE_INTERVAL_S."""
    source = default_source()
    if rollout.metric == REWARD_METRIC or not unscored or source == PUSHED:
        return None
    if rollout.score_dataset_id is not None:
        previous = await session.get(Dataset, rollout.score_dataset_id)
        if previous is not None and (
            previous.status in (DatasetStatus.QUEUED, DatasetStatus.BUILDING)
            or previous.created_at + dt.timedelta(seconds=settings.rollouts.game_score_interval_s) > now
        ):
            return None
    try:
        params = DatasetCreate(
            source=source,
            trajectory_ids=unscored[:MAX_SCORE_REQUEST],
            include_used=True,
            scorer=rollout.metric,
            persist_scores="all",
            min_agents=1,
            drop_equal_rewards=False,
        )
        dataset = await create_dataset(session, settings, params)
    except (AppError, ValueError) as exc:  # not configured, unknown scorer, an id it cannot read
        logger.warning("rollout.game_scores_failed rollout_id=%s source=%s error=%s", rollout.id, source, exc)
        return None
    rollout.score_dataset_id = dataset.id
    logger.info(
        "rollout.game_scores rollout_id=%s dataset_id=%s trajectories=%d",
        rollout.id,
        dataset.id,
        len(unscored),
    )
    return dataset


def stats_document(evaluation: Evaluation, evidence: Evidence, confidence: float) -> dict[str, Any]:
    """The rollout object's `stats` (stored with each evaluation)."""
    interval = evaluation.interval
    return {
        "candidate": {
            **asdict(evaluation.candidate),
            "requests": evidence.candidate_errors.requests,
            "errors": evidence.candidate_errors.errors,
        },
        "baseline": {
            **asdict(evaluation.baseline),
            "requests": evidence.baseline_errors.requests,
            "errors": evidence.baseline_errors.errors,
        },
        "difference": None
        if interval is None
        else {
            "estimate": interval.estimate,
            "lower": interval.lower,
            "upper": interval.upper,
            "confidence": confidence,
        },
        "mixed_trajectories": evidence.mixed,
        "test": "asymptotic confidence sequence (Waudby-Smith et al. 2024), AIPW",
    }


@dataclass(frozen=True, slots=True)
class Decision:
    state: RolloutState | None  # None: keep running
    reason: str


def decide(
    rollout: Rollout, evaluation: Evaluation, evidence: Evidence, settings: Settings, now: dt.datetime
) -> Decision:
    """Rewards first (a decided interval wins), then the error rates, then the clock."""
    if evaluation.verdict == Verdict.PROMOTE:
        return Decision(RolloutState.PROMOTED, evaluation.reason)
    if evaluation.verdict == Verdict.ROLL_BACK:
        return Decision(RolloutState.ROLLED_BACK, evaluation.reason)
    errors = error_rate_worse(
        evidence.candidate_errors,
        evidence.baseline_errors,
        margin=settings.rollouts.error_rate_margin,
        min_requests=settings.rollouts.min_error_requests,
    )
    if errors is not None:
        return Decision(RolloutState.ROLLED_BACK, errors)
    if now >= rollout.expires_at:
        return Decision(
            RolloutState.EXPIRED,
            f"no decision within max_duration ({rollout.max_duration_s} s): {evaluation.reason}",
        )
    return Decision(None, evaluation.reason)


async def evaluate_rollout(
    session: AsyncSession, settings: Settings, rollout: Rollout, *, now: dt.datetime | None = None
) -> Rollout:
    """Evaluate one running rollout, store its stats and apply the decision, if any."""
    now = now or utcnow()
    model = await session.get(ServedModel, rollout.model_id)
    assert model is not None
    candidate, baseline = await rollout_checkpoints(session, rollout)
    evidence = await gather_evidence(session, rollout, model, candidate, baseline)
    evaluation = evaluate_rewards(
        evidence.observations,
        share=rollout.share,
        confidence=rollout.confidence,
        min_trajectories=rollout.min_trajectories,
    )
    stats = stats_document(evaluation, evidence, rollout.confidence)
    decision = decide(rollout, evaluation, evidence, settings, now)
    if decision.state is None:
        await request_game_scores(session, settings, rollout, evidence.unscored, now)
        # guarded like a decision: another worker's final state and reason are never overwritten
        await session.execute(
            sa.update(Rollout)
            .where(Rollout.id == rollout.id, Rollout.state == RolloutState.RUNNING)
            .values(
                stats=stats,
                reason=decision.reason,
                evaluated_at=now,
                score_dataset_id=rollout.score_dataset_id,
            )
            .execution_options(synchronize_session=False)
        )
        await session.refresh(rollout)
        return rollout
    await finish_rollout(
        session, settings, rollout, decision.state, decision.reason, stats=stats, model=model, now=now
    )
    return rollout


async def finish_rollout(
    session: AsyncSession,
    settings: Settings,
    rollout: Rollout,
    state: RolloutState,
    reason: str,
    *,
    stats: dict[str, Any] | None = None,
    model: ServedModel | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """Move a running rollout to its final `state` once (False when another process did first):
    the guarded UPDATE, the alias move on promotion, the event, the webhooks, the hand-off."""
    now = now or utcnow()
    values: dict[str, Any] = {"state": state.value, "reason": reason, "finished_at": now, "evaluated_at": now}
    if stats is not None:
        values["stats"] = stats
    result = await session.execute(
        sa.update(Rollout)
        .where(Rollout.id == rollout.id, Rollout.state == RolloutState.RUNNING)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return False
    await session.refresh(rollout)
    model = model or await session.get(ServedModel, rollout.model_id)
    assert model is not None
    candidate, baseline = await rollout_checkpoints(session, rollout)
    data: dict[str, Any] = {
        "id": rollout.id,
        "model": model.name,
        "alias": rollout.alias,
        "state": state.value,
        "reason": reason,
        "candidate": candidate.id,
        "baseline": baseline.id,
    }
    if state == RolloutState.PROMOTED:
        await set_alias(session, model, rollout.alias, candidate)
        await _hand_off(session, candidate)
        message = f"Promoted: {model.name}:{rollout.alias} now serves step {candidate.step} ({candidate.id}); {reason}"
    elif state == RolloutState.ROLLED_BACK:
        message = f"Rolled back: {model.name}:{rollout.alias} keeps step {baseline.step}; {reason}"
    elif state == RolloutState.EXPIRED:
        message = f"Expired: {model.name}:{rollout.alias} keeps step {baseline.step}; {reason}"
    else:
        message = f"Cancelled: {model.name}:{rollout.alias} keeps step {baseline.step}; {reason}"
    event_type = f"rollout.{state.value}"
    await add_rollout_event(session, rollout.id, event_type, message, {**data, "stats": rollout.stats})
    urls = list(dict.fromkeys([*settings.training.webhook_urls, *(rollout.webhook_urls or [])]))
    webhooks.enqueue_event(session, urls, event_type, data, job_id=rollout.job_id, rollout_id=rollout.id)
    await session.flush()
    logger.info(
        "rollout.%s rollout_id=%s model=%s alias=%s", state.value, rollout.id, model.name, rollout.alias
    )
    return True


async def _hand_off(session: AsyncSession, candidate: Checkpoint) -> None:
    """The game takes a promoted candidate now (Babylon: its trained_models row): the hand-off
    of the candidate's job, held back when the job started the rollout, is queued."""
    if candidate.job_id is None:
        return
    job = await session.get(FineTuningJob, candidate.job_id)
    if job is not None and job.handoff_status is None:
        await handoff.mark_pending(session, job)


async def cancel_rollout(
    session: AsyncSession, settings: Settings, model: ServedModel, rollout_id: str
) -> Rollout:
    rollout = await get_rollout(session, model, rollout_id)
    if rollout.state != RolloutState.RUNNING:
        raise Conflict(
            f"rollout {rollout.id} is {rollout.state}, not running",
            param="rollout_id",
            code="rollout_not_running",
        )
    if not await finish_rollout(session, settings, rollout, RolloutState.CANCELLED, "cancelled by a request"):
        await session.refresh(rollout)
        raise Conflict(
            f"rollout {rollout.id} is {rollout.state}, not running",
            param="rollout_id",
            code="rollout_not_running",
        )
    return rollout


async def evaluate_running(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> int:
    """Evaluate every running rollout, each in its own short transaction; returns how many
    reached a decision."""
    async with sessionmaker() as session:
        ids = list(
            (await session.scalars(sa.select(Rollout.id).where(Rollout.state == RolloutState.RUNNING))).all()
        )
    decided = 0
    for rollout_id in ids:
        try:
            async with sessionmaker() as session:
                rollout = await session.get(Rollout, rollout_id)
                if rollout is None or rollout.state != RolloutState.RUNNING:
                    continue
                await evaluate_rollout(session, settings, rollout)
                decided += rollout.state != RolloutState.RUNNING
                await session.commit()
        except Exception:  # one rollout's failure must not stop the others' evaluation
            logger.exception("rollout.evaluation_failed rollout_id=%s", rollout_id)
    return decided


# -- the API's service functions ------------------------------------------------------------

RolloutView = tuple[Rollout, ServedModel, Checkpoint, Checkpoint]


async def view(session: AsyncSession, rollout: Rollout) -> RolloutView:
    model = await session.get(ServedModel, rollout.model_id)
    assert model is not None
    candidate, baseline = await rollout_checkpoints(session, rollout)
    return rollout, model, candidate, baseline


async def create_rollout(session: AsyncSession, settings: Settings, name: str, raw: Any) -> RolloutView:
    """`POST /v1/models/{name}/rollouts`: validate (400 naming the field), start (409 when the
    alias has a running rollout)."""
    options = parse_rollout_options(raw)
    model = await find_model_line(session, name)
    rollout = await start_rollout(session, model, options, BestRule.of(settings))
    return await view(session, rollout)


async def retrieve_rollout(session: AsyncSession, name: str, rollout_id: str) -> RolloutView:
    model = await find_model_line(session, name)
    return await view(session, await get_rollout(session, model, rollout_id))


async def list_rollouts(
    session: AsyncSession, name: str, *, after: str | None, limit: int, state: str | None
) -> tuple[list[RolloutView], bool]:
    """A model line's rollouts, newest first (also what the dashboard's model page shows)."""
    if state is not None and state not in set(RolloutState):
        raise BadRequest(
            f"state must be one of: {', '.join(RolloutState)}", param="state", code="invalid_state"
        )
    model = await find_model_line(session, name)
    rows, more = await list_model_rollouts(session, model, after=after, limit=limit, state=state)
    return [await view(session, row) for row in rows], more


async def cancel(session: AsyncSession, settings: Settings, name: str, rollout_id: str) -> RolloutView:
    model = await find_model_line(session, name)
    return await view(session, await cancel_rollout(session, settings, model, rollout_id))


async def events(
    session: AsyncSession, name: str, rollout_id: str, *, after: str | None, limit: int
) -> tuple[list[RolloutEvent], bool]:
    model = await find_model_line(session, name)
    rollout = await get_rollout(session, model, rollout_id)
    return await list_rollout_events(session, rollout, after=after, limit=limit)
