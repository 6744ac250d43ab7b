"""Model names → the concrete upstream model, resolved in the service.

Accepted names (the first that matches wins):

| name | serves |
| --- | --- |
| an allowed base model (`settings.training.allowed_base_models`) | that base model |
| `ftckpt-…` | that checkpoint |
| `ftjob-…` | that job's newest checkpoint that is not deleted |
| `wandb-artifact:///<e>/<p>/<name>:step<N>` (a job's `fine_tuned_model`) | that checkpoint |
| `wandb-artifact:///<e>/<p>/<name>:<alias>`, `<name>:<alias>` | the checkpoint the alias points at |
| `wandb-artifact:///<e>/<p>/<name>`, `<name>` | the model's `latest` |
| `<name>:step<N>` | step N of that model |

`latest` and `best` work without an alias row: `latest` is the highest step not deleted, `best`
the checkpoint with the highest `settings.training.best_metric`. An alias row of that name,
when present, wins. Anything else is 404 `model_not_found`.

`ModelResolver` caches answers for `resolve_cache_ttl_s` (1 s by default) so the hot path does
not query the database per request, while alias moves made by any process sharing the
database take effect within that time (moves made through this process's API at once).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import AppError, NotFound
from app.registry.models import Checkpoint, CheckpointOrigin, ModelAlias, ServedModel

ARTIFACT_PREFIX = "wandb-artifact:///"
MAX_NAME_LENGTH = 500
_STEP_TAG = re.compile(r"^step(\d{1,9})$")


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a requested model name means right now."""

    requested: str
    upstream_model: str  # the concrete name sent upstream
    base_model: str | None = None  # what a fallback would serve (None for base models)
    model_id: str | None = None
    checkpoint_id: str | None = None
    step: int | None = None
    deleted: bool = False  # the checkpoint is gone (deleted_at set)
    fallback: bool = False  # serve base_model when the checkpoint is gone

    @property
    def is_base_model(self) -> bool:
        return self.model_id is None


def model_not_found(name: str, detail: str | None = None) -> NotFound:
    message = f"The model {name!r} does not exist"
    message += f": {detail}" if detail else "."
    return NotFound(message, param="model", code="model_not_found")


@dataclass(frozen=True, slots=True)
class _Rules:
    allowed_base_models: frozenset[str]
    best_metric: str
    fallback_default: bool


async def resolve_model(
    session: AsyncSession,
    name: str,
    *,
    allowed_base_models: list[str] | frozenset[str],
    best_metric: str = "reward_mean",
    fallback_default: bool = False,
) -> Resolution:
    """Resolve `name` (any form in the module docstring); NotFound `model_not_found` if unknown."""
    rules = _Rules(frozenset(allowed_base_models), best_metric, fallback_default)
    if not name or len(name) > MAX_NAME_LENGTH:
        raise model_not_found(name[:80])
    if name in rules.allowed_base_models:
        return Resolution(requested=name, upstream_model=name)
    if name.startswith("ftckpt-"):
        ckpt = await session.get(Checkpoint, name)
        if ckpt is None:
            raise model_not_found(name)
        return await _from_checkpoint(session, name, ckpt, rules)
    if name.startswith("ftjob-"):
        return await _from_job(session, name, rules)
    if name.startswith(ARTIFACT_PREFIX):
        return await _from_artifact_name(session, name, rules)
    model_name, _, tag = name.rpartition(":") if ":" in name else (name, "", "")
    model = await _model_by_name(session, model_name)
    if model is None:
        raise model_not_found(name)
    return await _from_tag(session, name, model, tag or None, rules)


async def _model_by_name(session: AsyncSession, name: str) -> ServedModel | None:
    # Several entities/projects may hold the same model name: the oldest line wins, as in
    # app.registry.service.get_model_by_name; the wandb-artifact form names one exactly.
    return await session.scalar(
        sa.select(ServedModel).where(ServedModel.name == name).order_by(ServedModel.created_at).limit(1)
    )


def _parse_artifact(name: str) -> tuple[str, str, str, str | None] | None:
    """`wandb-artifact:///e/p/n[:tag]` → (entity, project, name, tag)."""
    path = name[len(ARTIFACT_PREFIX) :]
    parts = path.split("/")
    if len(parts) != 3 or not all(parts):
        return None
    entity, project, last = parts
    model_name, sep, tag = last.partition(":")
    if not model_name or (sep and not tag):
        return None
    return entity, project, model_name, tag or None


async def _from_artifact_name(session: AsyncSession, name: str, rules: _Rules) -> Resolution:
    # The concrete form is what jobs report as fine_tuned_model: one indexed lookup.
    ckpt = await session.scalar(sa.select(Checkpoint).where(Checkpoint.artifact_name == name))
    if ckpt is not None:
        return await _from_checkpoint(session, name, ckpt, rules)
    parsed = _parse_artifact(name)
    if parsed is None:
        raise model_not_found(name, "expected wandb-artifact:///<entity>/<project>/<name>[:<alias or stepN>]")
    entity, project, model_name, tag = parsed
    model = await session.scalar(
        sa.select(ServedModel).where(
            ServedModel.entity == entity, ServedModel.project == project, ServedModel.name == model_name
        )
    )
    if model is None:
        raise model_not_found(name)
    return await _from_tag(session, name, model, tag, rules)


async def _from_job(session: AsyncSession, name: str, rules: _Rules) -> Resolution:
    rows = (
        await session.scalars(
            sa.select(Checkpoint)
            .where(Checkpoint.job_id == name, Checkpoint.origin == CheckpointOrigin.STEP)
            .order_by(Checkpoint.step.desc())
        )
    ).all()
    if not rows:
        raise model_not_found(name, "the job has no checkpoint (yet)")
    alive = [c for c in rows if c.deleted_at is None]
    return await _from_checkpoint(session, name, alive[0] if alive else rows[0], rules)


async def _from_tag(
    session: AsyncSession, name: str, model: ServedModel, tag: str | None, rules: _Rules
) -> Resolution:
    step_match = _STEP_TAG.match(tag) if tag else None
    if step_match:
        ckpt = await session.scalar(
            sa.select(Checkpoint).where(
                Checkpoint.model_id == model.id, Checkpoint.step == int(step_match.group(1))
            )
        )
        if ckpt is None:
            raise model_not_found(name, f"model {model.name!r} has no checkpoint at {tag}")
        return _resolution(name, model, ckpt, rules)
    alias = tag or "latest"
    ckpt = await session.scalar(
        sa.select(Checkpoint)
        .join(ModelAlias, ModelAlias.checkpoint_id == Checkpoint.id)
        .where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
    )
    if ckpt is None and alias in ("latest", "best"):
        ckpt = await _computed_alias(session, model, alias, rules.best_metric)
    if ckpt is None:
        detail = (
            f"model {model.name!r} has no checkpoint yet"
            if alias in ("latest", "best")
            else f"model {model.name!r} has no alias {alias!r}"
        )
        raise model_not_found(name, detail)
    return _resolution(name, model, ckpt, rules)


async def _computed_alias(
    session: AsyncSession, model: ServedModel, alias: str, best_metric: str
) -> Checkpoint | None:
    rows = (
        await session.scalars(
            sa.select(Checkpoint)
            .where(
                Checkpoint.model_id == model.id,
                Checkpoint.deleted_at.is_(None),
                Checkpoint.origin == CheckpointOrigin.STEP,
            )
            .order_by(Checkpoint.step.desc())
        )
    ).all()
    if not rows:
        return None
    if alias == "latest":
        return rows[0]
    scored = [(c, _metric(c.metrics, best_metric)) for c in rows]
    with_metric = [(c, v) for c, v in scored if v is not None]
    if not with_metric:
        return None
    # ties go to the newer step (rows are newest first and max keeps the first maximum)
    return max(with_metric, key=lambda cv: cv[1])[0]


def _metric(metrics: dict[str, Any] | None, key: str) -> float | None:
    value = (metrics or {}).get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def _from_checkpoint(session: AsyncSession, name: str, ckpt: Checkpoint, rules: _Rules) -> Resolution:
    model = await session.get(ServedModel, ckpt.model_id)
    if model is None:  # the FK makes this impossible; say so clearly if it happens anyway
        raise model_not_found(name, "its model line is missing")
    return _resolution(name, model, ckpt, rules)


def _resolution(name: str, model: ServedModel, ckpt: Checkpoint, rules: _Rules) -> Resolution:
    return Resolution(
        requested=name,
        upstream_model=ckpt.artifact_name,
        base_model=model.base_model,
        model_id=model.id,
        checkpoint_id=ckpt.id,
        step=ckpt.step,
        deleted=ckpt.deleted_at is not None,
        fallback=bool(model.fallback_to_base) or rules.fallback_default,
    )


class ModelResolver:
    """`resolve_model` behind a short-lived per-process cache with single-flight misses."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        allowed_base_models: list[str],
        best_metric: str,
        fallback_default: bool,
        ttl_s: float,
        max_entries: int = 10_000,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._base_models = frozenset(allowed_base_models)
        self._best_metric = best_metric
        self._fallback_default = fallback_default
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._cache: dict[str, tuple[float, Resolution | AppError]] = {}
        self._inflight: dict[str, asyncio.Future[Resolution | AppError]] = {}
        self._generation = 0

    async def resolve(self, name: str) -> Resolution:
        if name in self._base_models:
            return Resolution(requested=name, upstream_model=name)
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            result = cached[1]
        else:
            result = await self._lookup(name)
        if isinstance(result, AppError):
            raise result
        return result

    async def _lookup(self, name: str) -> Resolution | AppError:
        pending = self._inflight.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Resolution | AppError] = asyncio.get_running_loop().create_future()
        self._inflight[name] = future
        generation = self._generation
        try:
            async with self._sessionmaker() as session:
                result: Resolution | AppError = await resolve_model(
                    session,
                    name,
                    allowed_base_models=self._base_models,
                    best_metric=self._best_metric,
                    fallback_default=self._fallback_default,
                )
        except AppError as exc:
            result = exc
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else needs a warning
            raise
        finally:
            self._inflight.pop(name, None)
        future.set_result(result)
        # An invalidation during the lookup means the answer may predate an alias move.
        if self._ttl_s > 0 and generation == self._generation:
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            self._cache[name] = (time.monotonic() + self._ttl_s, result)
        return result

    def invalidate(self) -> None:
        """Forget every cached answer (after an alias move through this process)."""
        self._generation += 1
        self._cache.clear()
