"""Model names → the concrete upstream model, resolved in the service.

Accepted names (the first that matches wins):

| name | serves |
| --- | --- |
| an allowed base model (`settings.training.allowed_base_models`) | that base model |
| `ftckpt-…` | that checkpoint |
| `ftjob-…` | that job's newest checkpoint that is not deleted |
| `wandb-artifact:///<e>/<p>/<name>:step<N>` (a job's `fine_tuned_model`) | that checkpoint |
| `wandb-artifact:///<e>/<p>/<name>:<alias>`, `<name>:<alias>` | the checkpoint the alias points at |
| `wandb-artifact:///<e>/<p>/<name>`, `<name>` | the model's `latest` (before its first checkpoint: the bare URI, as ART sends it) |
| `<name>:step<N>` | step N of that model |

`latest` and `best` work without an alias row, by the registry's one rule
(`policy.computed_alias`): `latest` is the highest step not deleted, `best` the checkpoint
with the best `TRAINING__BEST_METRIC` in `TRAINING__BEST_METRIC_MODE` (the latest when none
has the metric). An alias row of that name, when present, wins. Anything else is 404
`model_not_found`.

`ModelResolver` caches answers for `resolve_cache_ttl_s` (1 s by default) so the hot path does
not query the database per request, while alias moves made by any process sharing the
database take effect within that time (moves made through this process's API at once).
While the database is unreachable it keeps serving the last answer it had for a name (stale,
counted in `stale_served`), so the gateway goes on serving the models it has resolved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import random
import re
import time
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import is_unavailable
from app.errors import AppError
from app.keys.scopes import ModelAccess, subjects
from app.registry import service
from app.registry.models import Checkpoint, CheckpointOrigin, ServedModel
from app.registry.policy import COMPUTED_ALIASES, BestRule, computed_alias, live_checkpoints
from app.registry.rollouts import rollout_checkpoints, running_rollout
from app.registry.service import ARTIFACT_PREFIX, model_not_found

logger = logging.getLogger(__name__)

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
    model_name: str | None = None  # the model line's name (what a key's model patterns match)
    split: RolloutSplit | None = None  # a running rollout shares this alias with a candidate

    @property
    def is_base_model(self) -> bool:
        return self.model_id is None


AGENT_WINDOW_S = 3600  # an agent without a trajectory id keeps one arm for this window
_HASH_SPACE = 1 << 64


@dataclass(frozen=True, slots=True)
class RolloutSplit:
    """An alias under a running rollout: `candidate` serves `share` of the traffic, sticky by
    trajectory. The arm is a keyed BLAKE2b hash (RFC 7693) of the trajectory id with the
    rollout's secret salt as the key: the same trajectory always gets the same arm, different
    rollouts split independently, and callers cannot steer the assignment (so it is independent
    of anything about the trajectory, as the evaluation's randomisation assumes)."""

    rollout_id: str
    share: float
    key: bytes
    candidate: Resolution
    threshold: int = 0

    @classmethod
    def of(cls, rollout_id: str, share: float, salt: str, candidate: Resolution) -> RolloutSplit:
        return cls(rollout_id, share, salt.encode(), candidate, int(share * _HASH_SPACE))

    def takes(self, trajectory_id: str | None, agent_id: str | None, now: float | None = None) -> bool:
        """Whether this request goes to the candidate: by `trajectory_id`, else by `agent_id`
        within its hour window, else at random."""
        if trajectory_id:
            sticky = trajectory_id
        elif agent_id:
            window = int((time.time() if now is None else now) // AGENT_WINDOW_S)
            sticky = f"agent\x1f{agent_id}\x1f{window}"
        else:
            return random.random() < self.share
        digest = hashlib.blake2b(sticky.encode(), digest_size=8, key=self.key).digest()
        return int.from_bytes(digest, "big") < self.threshold


# What goes upstream, as openpipe-art 0.5.18 itself names it (sources in .venv/lib/python3.11/
# site-packages/art/; the gateway must send what ART would, since W&B serves what ART sends):
# - a base model: its name as is. ART sends `inference_model_name or name` for a model no
#   backend names (art/model.py:416-421, Model.get_inference_name); ServerlessBackend never
#   renames one (it registers trainable models only, art/serverless/backend.py:92-110).
# - a model line before its first checkpoint: the bare artifact URI. TrainableModel.register sets
#   inference_model_name from ServerlessBackend._model_inference_name(model) with no step
#   (art/model.py:1164-1168), which is `wandb-artifact:///{entity}/{project}/{name}`
#   (art/serverless/backend.py:149-153); W&B serves the base weights under it until a
#   checkpoint exists.
# - a checkpoint: the same URI with `:step{N}` (backend.py:151-152), stored as artifact_name.
def base_model_upstream_name(base_model: str) -> str:
    """The upstream name of a base model, served directly or as a fallback (one rule)."""
    return base_model


def model_line_upstream_name(model: ServedModel) -> str:
    """The upstream name of a model line that has no checkpoint yet."""
    return f"{ARTIFACT_PREFIX}{model.entity}/{model.project}/{model.name}"


@dataclass(frozen=True, slots=True)
class ResolveRules:
    """The settings resolution depends on."""

    allowed_base_models: frozenset[str]
    best: BestRule = field(default_factory=BestRule)
    fallback_default: bool = False

    @classmethod
    def of(cls, settings: Settings) -> ResolveRules:
        return cls(
            frozenset(settings.training.allowed_base_models),
            BestRule.of(settings),
            settings.inference.fallback_to_base_model,
        )


async def resolve_model(session: AsyncSession, name: str, rules: ResolveRules) -> Resolution:
    """Resolve `name` (any form in the module docstring); NotFound `model_not_found` if unknown."""
    if not name or len(name) > MAX_NAME_LENGTH:
        raise model_not_found(name[:80])
    if name in rules.allowed_base_models:
        return Resolution(requested=name, upstream_model=base_model_upstream_name(name))
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
    model = await service.model_line_by_name(session, model_name)
    if model is None:
        raise model_not_found(name)
    return await _from_tag(session, name, model, tag or None, rules)


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


async def _from_artifact_name(session: AsyncSession, name: str, rules: ResolveRules) -> Resolution:
    # The concrete form is what jobs report as fine_tuned_model: one indexed lookup.
    ckpt = await session.scalar(sa.select(Checkpoint).where(Checkpoint.artifact_name == name))
    if ckpt is not None:
        return await _from_checkpoint(session, name, ckpt, rules)
    parsed = _parse_artifact(name)
    if parsed is None:
        raise model_not_found(name, "expected wandb-artifact:///<entity>/<project>/<name>[:<alias or stepN>]")
    entity, project, model_name, tag = parsed
    model = await service.model_line(session, entity=entity, project=project, name=model_name)
    if model is None:
        raise model_not_found(name)
    return await _from_tag(session, name, model, tag, rules)


async def _from_job(session: AsyncSession, name: str, rules: ResolveRules) -> Resolution:
    # a late checkpoint (a cancelled or abandoned step W&B finished anyway) is never the job's model
    rows = [c for c in (await service.job_checkpoints(session, name))[0] if c.origin == CheckpointOrigin.STEP]
    if not rows:
        raise model_not_found(name, "the job has no checkpoint (yet)")
    alive = [c for c in rows if c.deleted_at is None]
    return await _from_checkpoint(session, name, alive[0] if alive else rows[0], rules)


async def _from_tag(
    session: AsyncSession, name: str, model: ServedModel, tag: str | None, rules: ResolveRules
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
    ckpt = await service.aliased_checkpoint(session, model, alias)
    if ckpt is None and alias in COMPUTED_ALIASES:
        ckpt = computed_alias(await live_checkpoints(session, model), alias, rules.best)
        if ckpt is None and not await _has_checkpoints(session, model):
            return Resolution(
                requested=name,
                upstream_model=model_line_upstream_name(model),
                base_model=model.base_model,
                model_id=model.id,
                fallback=bool(model.fallback_to_base) or rules.fallback_default,
                model_name=model.name,
            )
    if ckpt is None:
        detail = (
            f"model {model.name!r} has no checkpoint yet"
            if alias in COMPUTED_ALIASES
            else f"model {model.name!r} has no alias {alias!r}"
        )
        raise model_not_found(name, detail)
    resolution = _resolution(name, model, ckpt, rules)
    rollout = await running_rollout(session, model.id, alias)
    if rollout is None:
        return resolution
    candidate, _ = await rollout_checkpoints(session, rollout)
    split = RolloutSplit.of(
        rollout.id, rollout.share, rollout.salt, _resolution(name, model, candidate, rules)
    )
    return dataclasses.replace(resolution, split=split)


async def _has_checkpoints(session: AsyncSession, model: ServedModel) -> bool:
    found = await session.scalar(sa.select(Checkpoint.id).where(Checkpoint.model_id == model.id).limit(1))
    return found is not None


async def _from_checkpoint(
    session: AsyncSession, name: str, ckpt: Checkpoint, rules: ResolveRules
) -> Resolution:
    model = await session.get(ServedModel, ckpt.model_id)
    if model is None:  # the FK makes this impossible; say so clearly if it happens anyway
        raise model_not_found(name, "its model line is missing")
    return _resolution(name, model, ckpt, rules)


def _resolution(name: str, model: ServedModel, ckpt: Checkpoint, rules: ResolveRules) -> Resolution:
    return Resolution(
        requested=name,
        upstream_model=ckpt.artifact_name,
        base_model=model.base_model,
        model_id=model.id,
        checkpoint_id=ckpt.id,
        step=ckpt.step,
        deleted=ckpt.deleted_at is not None,
        fallback=bool(model.fallback_to_base) or rules.fallback_default,
        model_name=model.name,
    )


def check_access(access: ModelAccess, resolution: Resolution) -> None:
    """404 `model_not_found`, worded exactly as for a name that does not exist, when a key may
    not call the model `resolution` serves: a key must not learn which models exist beyond its
    own. Patterns match the resolved model's names, never the raw request (app/keys/scopes.py)."""
    if access.unrestricted:
        return
    names = subjects(
        requested=resolution.requested,
        model_name=resolution.model_name,
        step=resolution.step,
        base_model=resolution.upstream_model if resolution.is_base_model else None,
    )
    if not access.allows(names):
        raise model_not_found(resolution.requested)


class ModelResolver:
    """`resolve_model` behind a short-lived per-process cache with single-flight misses."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        rules: ResolveRules,
        *,
        ttl_s: float,
        max_entries: int = 10_000,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._rules = rules
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._cache: dict[str, tuple[float, Resolution | AppError]] = {}
        self._inflight: dict[str, asyncio.Future[Resolution | AppError]] = {}
        self._generation = 0
        self.stale_served = 0  # answers given from an expired entry while the database was away

    @classmethod
    def from_settings(
        cls, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
    ) -> ModelResolver:
        return cls(sessionmaker, ResolveRules.of(settings), ttl_s=settings.inference.resolve_cache_ttl_s)

    async def resolve(self, name: str) -> Resolution:
        if name in self._rules.allowed_base_models:
            return Resolution(requested=name, upstream_model=base_model_upstream_name(name))
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
                result: Resolution | AppError = await resolve_model(session, name, self._rules)
        except AppError as exc:
            result = exc
        except Exception as exc:
            stale = self._cache.get(name)
            if stale is None or not is_unavailable(exc):
                future.set_exception(exc)
                future.exception()
                raise
            # The database is away: the last answer beats an error. Kept for another ttl so
            # the next requests do not each wait for a connect to fail.
            result = stale[1]
            self.stale_served += 1
            self._cache[name] = (time.monotonic() + max(self._ttl_s, 1.0), result)
            logger.warning("registry.resolve_stale name=%s error=%s", name[:80], type(exc).__name__)
            future.set_result(result)
            return result
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
