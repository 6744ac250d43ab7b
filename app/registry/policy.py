"""The registry's rules: which checkpoint is `latest` and which is `best` (one rule, used by
the aliases that move as steps finish and by name resolution when no alias row is stored), and
the checkpoint retention policy.

Retention keeps, per model line: the latest checkpoint, the best one by
`TRAINING__BEST_METRIC`, the last `TRAINING__KEEP_LAST_CHECKPOINTS`, anything an alias
points to (e.g. an operator's `production`) and both arms of a running rollout; the rest is deleted on W&B (~200 MB each) and
marked deleted here. ART's own `delete_checkpoints` reads a local history file and in a
stateless container keeps only the latest (art-serverless.md §7.7), so the policy lives here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import utcnow
from app.registry.models import Checkpoint, CheckpointOrigin, ModelAlias, Rollout, RolloutState, ServedModel
from app.registry.service import set_alias

COMPUTED_ALIASES = ("latest", "best")


@dataclass(frozen=True, slots=True)
class BestRule:
    """What `best` means: the checkpoint with the highest (`max`) or lowest (`min`) `metric`."""

    metric: str = "reward_mean"
    mode: Literal["max", "min"] = "max"

    @classmethod
    def of(cls, settings: Settings) -> BestRule:
        return cls(settings.training.best_metric, settings.training.best_metric_mode)


def metric_value(ckpt: Checkpoint, metric: str) -> float | None:
    value = (ckpt.metrics or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def pick_best(ckpts: Sequence[Checkpoint], metric: str, mode: str) -> Checkpoint | None:
    """Best by `metric` (ties: the later step); None when no checkpoint has the metric."""
    scored = [(v, c.step, c) for c in ckpts if (v := metric_value(c, metric)) is not None]
    if not scored:
        return None
    if mode == "min":
        return min(scored, key=lambda t: (t[0], -t[1]))[2]
    return max(scored, key=lambda t: (t[0], t[1]))[2]


def computed_alias(ckpts: Sequence[Checkpoint], alias: str, rule: BestRule) -> Checkpoint | None:
    """`latest` or `best` among live checkpoints (ordered by step) without a stored alias row:
    latest is the highest step; best is `pick_best` by the rule, or the latest when no
    checkpoint has the metric. None only when there is no checkpoint."""
    if not ckpts:
        return None
    latest = max(ckpts, key=lambda c: c.step)
    if alias == "latest":
        return latest
    return pick_best(ckpts, rule.metric, rule.mode) or latest


async def live_checkpoints(session: AsyncSession, model: ServedModel) -> list[Checkpoint]:
    """The line's checkpoints that aliases may point at and retention may delete: not deleted,
    and produced by a step a job completed (late and external ones are kept, never aliased)."""
    rows = await session.scalars(
        sa.select(Checkpoint)
        .where(
            Checkpoint.model_id == model.id,
            Checkpoint.deleted_at.is_(None),
            Checkpoint.origin == CheckpointOrigin.STEP,
        )
        .order_by(Checkpoint.step)
    )
    return list(rows.all())


async def move_aliases(
    session: AsyncSession, settings: Settings, model: ServedModel
) -> dict[str, Checkpoint]:
    """Point `latest` at the newest checkpoint and `best` at the best one (latest if none is scored)."""
    ckpts = await live_checkpoints(session, model)
    rule = BestRule.of(settings)
    moved: dict[str, Checkpoint] = {}
    for alias in COMPUTED_ALIASES:
        ckpt = computed_alias(ckpts, alias, rule)
        if ckpt is None:
            return {}
        await set_alias(session, model, alias, ckpt)
        moved[alias] = ckpt
    return moved


async def retention_candidates(
    session: AsyncSession, settings: Settings, model: ServedModel
) -> list[Checkpoint]:
    ckpts = await live_checkpoints(session, model)
    if not ckpts:
        return []
    keep = {c.id for c in ckpts[-1 - settings.training.keep_last_checkpoints :]}  # latest + last K
    best = pick_best(ckpts, settings.training.best_metric, settings.training.best_metric_mode)
    if best is not None:
        keep.add(best.id)
    aliased = await session.scalars(
        sa.select(ModelAlias.checkpoint_id).where(ModelAlias.model_id == model.id)
    )
    keep.update(aliased.all())
    # both arms of a running rollout serve traffic: neither may go while it runs
    arms = await session.execute(
        sa.select(Rollout.candidate_checkpoint_id, Rollout.baseline_checkpoint_id).where(
            Rollout.model_id == model.id, Rollout.state == RolloutState.RUNNING
        )
    )
    for candidate, baseline in arms.all():
        keep.update((candidate, baseline))
    return [c for c in ckpts if c.id not in keep]


async def mark_deleted(session: AsyncSession, model: ServedModel, steps: list[int]) -> None:
    if not steps:
        return
    await session.execute(
        sa.update(Checkpoint)
        .where(Checkpoint.model_id == model.id, Checkpoint.step.in_(steps), Checkpoint.deleted_at.is_(None))
        .values(deleted_at=utcnow())
        .execution_options(synchronize_session=False)
    )
