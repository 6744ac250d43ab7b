"""Rollouts in the registry: the rows that split an alias between its checkpoint and a candidate.

This module owns what name resolution and the jobs need (below the evaluation in the layers):
validating a rollout's options, starting one (one `running` rollout per alias, a 409 otherwise;
the database's partial unique index backs that up), reading them, and recording their events.
The evaluation, the decisions and their webhooks live in `app/rollouts/`. Functions flush,
never commit.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.errors import BadRequest, Conflict, NotFound
from app.ids import new_id
from app.pagination import after_row, created_order, created_page, cursor_anchor, fetch_page
from app.registry.models import (
    Checkpoint,
    CheckpointOrigin,
    ModelAlias,
    Rollout,
    RolloutEvent,
    RolloutState,
    ServedModel,
)
from app.registry.policy import COMPUTED_ALIASES, BestRule, computed_alias, live_checkpoints
from app.registry.service import ALIAS_PATTERN, aliased_checkpoint, find_checkpoint, validate_alias

DEFAULT_SHARE = 0.1
DEFAULT_METRIC = "reward"  # the pushed trajectory's reward; any other value names a scorer
DEFAULT_MIN_TRAJECTORIES = 30
DEFAULT_CONFIDENCE = 0.95
DEFAULT_MAX_DURATION_S = 24 * 3600
MAX_DURATION_S = 90 * 24 * 3600
OPTION_FIELDS = ("alias", "candidate", "share", "metric", "min_trajectories", "confidence", "max_duration")


@dataclass(frozen=True, slots=True)
class RolloutOptions:
    """A rollout's validated options (`candidate` is None when a job supplies its checkpoint)."""

    alias: str
    candidate: str | int | None
    share: float = DEFAULT_SHARE
    metric: str = DEFAULT_METRIC
    min_trajectories: int = DEFAULT_MIN_TRAJECTORIES
    confidence: float = DEFAULT_CONFIDENCE
    max_duration_s: int = DEFAULT_MAX_DURATION_S


def _number(raw: dict[str, Any], key: str, param: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{param} must be a number", param=param, code="invalid_rollout")
    return float(value)


def parse_rollout_options(raw: Any, *, prefix: str = "", candidate_required: bool = True) -> RolloutOptions:
    """Validate a rollout request (or a job's `rollout` option): 400 naming the field at fault."""
    if not isinstance(raw, dict):
        raise BadRequest(
            f"{prefix or 'body'} must be an object", param=prefix or None, code="invalid_rollout"
        )
    unknown = sorted(set(raw) - set(OPTION_FIELDS))
    if unknown:
        raise BadRequest(
            f"{prefix}{unknown[0]}: unknown field; known: {', '.join(OPTION_FIELDS)}",
            param=f"{prefix}{unknown[0]}",
            code="invalid_rollout",
        )
    alias = raw.get("alias")
    if not isinstance(alias, str) or not ALIAS_PATTERN.match(alias):
        raise BadRequest(
            f"{prefix}alias must name an alias of the model line (e.g. 'production')",
            param=f"{prefix}alias",
            code="invalid_rollout",
        )
    candidate = raw.get("candidate")
    if candidate is None:
        if candidate_required:
            raise BadRequest(
                f"{prefix}candidate is required: a checkpoint id (ftckpt-…), a step or an alias",
                param=f"{prefix}candidate",
                code="invalid_rollout",
            )
    elif isinstance(candidate, bool) or not isinstance(candidate, (str, int)) or candidate == "":
        raise BadRequest(
            f"{prefix}candidate must be a checkpoint id (ftckpt-…), a step number or an alias",
            param=f"{prefix}candidate",
            code="invalid_rollout",
        )
    share = _number(raw, "share", f"{prefix}share")
    if share is not None and not 0.0 < share < 1.0:
        raise BadRequest(
            f"{prefix}share must be between 0 and 1 (exclusive): the candidate's part of the traffic",
            param=f"{prefix}share",
            code="invalid_rollout",
        )
    metric = raw.get("metric", DEFAULT_METRIC)
    if not isinstance(metric, str) or not 0 < len(metric) <= 64:
        raise BadRequest(
            f"{prefix}metric must be 'reward' or a scorer name (at most 64 characters)",
            param=f"{prefix}metric",
            code="invalid_rollout",
        )
    minimum = _number(raw, "min_trajectories", f"{prefix}min_trajectories")
    if minimum is not None and (minimum != int(minimum) or not 5 <= minimum <= 1_000_000):
        raise BadRequest(
            f"{prefix}min_trajectories must be an integer from 5 to 1000000 (per arm)",
            param=f"{prefix}min_trajectories",
            code="invalid_rollout",
        )
    confidence = _number(raw, "confidence", f"{prefix}confidence")
    if confidence is not None and not 0.5 <= confidence < 1.0:
        raise BadRequest(
            f"{prefix}confidence must be at least 0.5 and below 1 (e.g. 0.95)",
            param=f"{prefix}confidence",
            code="invalid_rollout",
        )
    duration = _number(raw, "max_duration", f"{prefix}max_duration")
    if duration is not None and not 1 <= duration <= MAX_DURATION_S:
        raise BadRequest(
            f"{prefix}max_duration must be seconds from 1 to {MAX_DURATION_S}",
            param=f"{prefix}max_duration",
            code="invalid_rollout",
        )
    return RolloutOptions(
        alias=alias,
        candidate=candidate,
        share=share if share is not None else DEFAULT_SHARE,
        metric=metric,
        min_trajectories=int(minimum) if minimum is not None else DEFAULT_MIN_TRAJECTORIES,
        confidence=confidence if confidence is not None else DEFAULT_CONFIDENCE,
        max_duration_s=int(duration) if duration is not None else DEFAULT_MAX_DURATION_S,
    )


async def alias_checkpoint(
    session: AsyncSession, model: ServedModel, alias: str, best: BestRule
) -> Checkpoint | None:
    """What `alias` serves now: its row, else `latest`/`best` by the registry's one rule."""
    ckpt = await aliased_checkpoint(session, model, alias)
    if ckpt is None and alias in COMPUTED_ALIASES:
        ckpt = computed_alias(await live_checkpoints(session, model), alias, best)
    return ckpt


async def _candidate(session: AsyncSession, model: ServedModel, ref: str | int, best: BestRule) -> Checkpoint:
    if isinstance(ref, str) and ALIAS_PATTERN.match(ref) and not ref.startswith("step"):
        ckpt = await alias_checkpoint(session, model, ref, best)
        if ckpt is not None:
            return ckpt
    try:
        return await find_checkpoint(session, model, ref)
    except NotFound:
        raise NotFound(
            f"candidate: model {model.name!r} has no checkpoint or alias {ref!r}",
            param="candidate",
            code="checkpoint_not_found",
        ) from None


async def running_rollout(session: AsyncSession, model_id: str, alias: str) -> Rollout | None:
    return await session.scalar(
        sa.select(Rollout).where(
            Rollout.model_id == model_id, Rollout.alias == alias, Rollout.state == RolloutState.RUNNING
        )
    )


async def start_rollout(
    session: AsyncSession,
    model: ServedModel,
    options: RolloutOptions,
    best: BestRule,
    *,
    candidate: Checkpoint | None = None,
    job_id: str | None = None,
    webhook_urls: list[str] | None = None,
) -> Rollout:
    """Start a rollout of `options.candidate` (or `candidate`) on `options.alias`; 409 when the
    alias already has a running one, 400 when there is nothing to compare."""
    validate_alias(options.alias)
    baseline = await alias_checkpoint(session, model, options.alias, best)
    if baseline is None:
        raise BadRequest(
            f"alias: model {model.name!r} has no alias {options.alias!r} to roll out on; point it at "
            "a checkpoint first (POST /v1/models/{name}/aliases)",
            param="alias",
            code="alias_not_found",
        )
    if candidate is None:
        assert options.candidate is not None
        candidate = await _candidate(session, model, options.candidate, best)
    if candidate.model_id != model.id:
        raise BadRequest("candidate: the checkpoint belongs to another model", param="candidate")
    if candidate.deleted_at is not None or candidate.origin != CheckpointOrigin.STEP:
        raise BadRequest(
            f"candidate: checkpoint {candidate.id} cannot serve (deleted, or not from a completed step)",
            param="candidate",
            code="checkpoint_not_aliasable",
        )
    if candidate.id == baseline.id:
        raise BadRequest(
            f"candidate: {options.alias!r} already serves {candidate.id} (step {candidate.step})",
            param="candidate",
            code="candidate_is_baseline",
        )
    existing = await running_rollout(session, model.id, options.alias)
    if existing is not None:
        raise Conflict(
            f"alias {options.alias!r} of {model.name!r} already has a running rollout ({existing.id}); "
            "cancel it first",
            param="alias",
            code="rollout_running",
        )
    now = utcnow()
    rollout = Rollout(
        id=new_id("rollout"),
        model_id=model.id,
        alias=options.alias,
        candidate_checkpoint_id=candidate.id,
        baseline_checkpoint_id=baseline.id,
        share=options.share,
        metric=options.metric,
        min_trajectories=options.min_trajectories,
        confidence=options.confidence,
        max_duration_s=options.max_duration_s,
        state=RolloutState.RUNNING,
        salt=secrets.token_hex(16),
        job_id=job_id,
        webhook_urls=webhook_urls or None,
        created_at=now,
        expires_at=now + dt.timedelta(seconds=options.max_duration_s),
    )
    session.add(rollout)
    await session.flush()
    await add_rollout_event(
        session,
        rollout.id,
        "rollout.started",
        f"Rollout of step {candidate.step} ({candidate.id}) on {model.name}:{options.alias} "
        f"(serving step {baseline.step}) for {options.share:.0%} of its traffic",
        {"candidate": candidate.id, "baseline": baseline.id, "share": options.share, "job_id": job_id},
    )
    return rollout


async def add_rollout_event(
    session: AsyncSession, rollout_id: str, type_: str, message: str, data: dict[str, Any] | None = None
) -> RolloutEvent:
    event = RolloutEvent(
        id=new_id("rolloutevt"),
        rollout_id=rollout_id,
        created_at=utcnow(),
        type=type_,
        message=message,
        data=data,
    )
    session.add(event)
    await session.flush()
    return event


async def get_rollout(session: AsyncSession, model: ServedModel, rollout_id: str) -> Rollout:
    row = await session.get(Rollout, rollout_id)
    if row is None or row.model_id != model.id:
        raise NotFound(
            f"model {model.name!r} has no rollout {rollout_id!r}",
            param="rollout_id",
            code="rollout_not_found",
        )
    return row


async def list_model_rollouts(
    session: AsyncSession,
    model: ServedModel,
    *,
    after: str | None = None,
    limit: int = 20,
    state: str | None = None,
) -> tuple[list[Rollout], bool]:
    """A model line's rollouts, newest first (the model page of the dashboard lists these)."""
    query = sa.select(Rollout).where(Rollout.model_id == model.id)
    if state is not None:
        query = query.where(Rollout.state == state)
    if after is not None:
        anchor = await cursor_anchor(session, Rollout, after, what="rollout")
        if anchor.model_id != model.id:
            raise BadRequest(
                f"after: no rollout {after!r} of this model", param="after", code="invalid_cursor"
            )
        query = query.where(after_row(Rollout, anchor, newest_first=True))
    return await fetch_page(session, query.order_by(*created_order(Rollout, newest_first=True)), limit)


async def list_rollout_events(
    session: AsyncSession, rollout: Rollout, *, after: str | None = None, limit: int = 20
) -> tuple[list[RolloutEvent], bool]:
    """A rollout's events, oldest first."""
    query = sa.select(RolloutEvent).where(RolloutEvent.rollout_id == rollout.id)
    return await created_page(
        session, query, RolloutEvent, after=after, limit=limit, newest_first=False, what="rollout event"
    )


async def rollout_checkpoints(session: AsyncSession, rollout: Rollout) -> tuple[Checkpoint, Checkpoint]:
    """(candidate, baseline)."""
    candidate = await session.get(Checkpoint, rollout.candidate_checkpoint_id)
    baseline = await session.get(Checkpoint, rollout.baseline_checkpoint_id)
    assert candidate is not None
    assert baseline is not None
    return candidate, baseline


async def alias_row(session: AsyncSession, model_id: str, alias: str) -> ModelAlias | None:
    return await session.scalar(
        sa.select(ModelAlias).where(ModelAlias.model_id == model_id, ModelAlias.alias == alias)
    )
