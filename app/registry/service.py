"""Model lines, checkpoints and aliases: the one place that reads and writes them.

Every other package asks here: the training runner records checkpoints, the jobs API lists a
job's checkpoints, the gateway resolves names (app/registry/resolution.py), the game's hand-off
reads a job's last checkpoint. Functions flush, never commit.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.errors import BadRequest, NotFound
from app.ids import new_id
from app.pagination import created_page, fetch_page
from app.registry.models import AliasEvent, Checkpoint, CheckpointOrigin, ModelAlias, ServedModel

ARTIFACT_PREFIX = "wandb-artifact:///"
ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")
RESERVED_ALIAS_PREFIX = "step"  # `<model>:step<N>` names a checkpoint, never an alias
_STEP_REF = re.compile(r"^(?:step)?(\d{1,9})$")


def artifact_name(entity: str, project: str, name: str, step: int | None = None) -> str:
    base = f"{ARTIFACT_PREFIX}{entity}/{project}/{name}"
    return base if step is None else f"{base}:step{step}"


def model_not_found(name: str, detail: str | None = None) -> NotFound:
    message = f"The model {name!r} does not exist"
    message += f": {detail}" if detail else "."
    return NotFound(message, param="model", code="model_not_found")


# -- model lines ------------------------------------------------------------------------------


async def get_or_create_model(
    session: AsyncSession,
    *,
    entity: str,
    project: str,
    name: str,
    base_model: str,
    remote_id: str | None = None,
) -> ServedModel:
    model = await model_line(session, entity=entity, project=project, name=name)
    if model is None:
        model = ServedModel(
            id=new_id("mdl"),
            entity=entity,
            project=project,
            name=name,
            base_model=base_model,
            remote_id=remote_id,
        )
        session.add(model)
        await session.flush()
    elif remote_id and model.remote_id != remote_id:
        model.remote_id = remote_id
        await session.flush()
    return model


async def model_line(session: AsyncSession, *, entity: str, project: str, name: str) -> ServedModel | None:
    """The model line with exactly this W&B entity, project and name."""
    return await session.scalar(
        sa.select(ServedModel).where(
            ServedModel.entity == entity, ServedModel.project == project, ServedModel.name == name
        )
    )


async def model_line_by_name(session: AsyncSession, name: str) -> ServedModel | None:
    """The model line a bare name means. Several entities or projects may hold the same name:
    the oldest line wins (the `wandb-artifact:///<entity>/<project>/<name>` form names one exactly)."""
    return await session.scalar(
        sa.select(ServedModel).where(ServedModel.name == name).order_by(ServedModel.created_at).limit(1)
    )


async def find_model_line(session: AsyncSession, name: str) -> ServedModel:
    """A model line by its name or `wandb-artifact:///<entity>/<project>/<name>`; 404 otherwise."""
    if name.startswith(ARTIFACT_PREFIX):
        parts = name[len(ARTIFACT_PREFIX) :].split("/")
        if len(parts) == 3 and all(parts) and ":" not in parts[2]:
            model = await model_line(session, entity=parts[0], project=parts[1], name=parts[2])
            if model is not None:
                return model
        raise model_not_found(
            name, "name a model line: <name> or wandb-artifact:///<entity>/<project>/<name>"
        )
    model = await model_line_by_name(session, name)
    if model is None:
        raise model_not_found(name)
    return model


async def model_lines_named(
    session: AsyncSession, *, project: str, name: str, entity: str | None = None
) -> list[ServedModel]:
    """Every line called `name` in `project` (of `entity` when known): a new job's suffix may
    continue one of them."""
    query = sa.select(ServedModel).where(ServedModel.project == project, ServedModel.name == name)
    if entity:
        query = query.where(ServedModel.entity == entity)
    return list((await session.scalars(query)).all())


# -- checkpoints ------------------------------------------------------------------------------


async def record_checkpoint(
    session: AsyncSession,
    model: ServedModel,
    *,
    step: int,
    metrics: dict[str, float],
    job_id: str | None = None,
    job_step: int | None = None,
    origin: CheckpointOrigin = CheckpointOrigin.STEP,
) -> Checkpoint:
    """Insert the checkpoint of `step` once; a second call returns the stored row."""
    existing = await session.scalar(
        sa.select(Checkpoint).where(Checkpoint.model_id == model.id, Checkpoint.step == step)
    )
    if existing is not None:
        return existing
    ckpt = Checkpoint(
        id=new_id("ftckpt"),
        model_id=model.id,
        job_id=job_id,
        job_step=job_step,
        step=step,
        artifact_name=artifact_name(model.entity, model.project, model.name, step),
        metrics=dict(metrics),
        origin=origin,
    )
    session.add(ckpt)
    await session.flush()
    return ckpt


async def find_checkpoint(session: AsyncSession, model: ServedModel, ref: str | int) -> Checkpoint:
    """A checkpoint of `model` by id (`ftckpt-…`), step (`12`, `"12"`, `"step12"`) or artifact name."""
    text = str(ref).strip()
    condition: sa.ColumnElement[bool]
    if isinstance(ref, int) and not isinstance(ref, bool):
        condition = Checkpoint.step == ref
    elif text.startswith("ftckpt-"):
        condition = Checkpoint.id == text
    elif text.startswith(ARTIFACT_PREFIX):
        condition = Checkpoint.artifact_name == text
    elif (match := _STEP_REF.match(text)) is not None:
        condition = Checkpoint.step == int(match.group(1))
    else:
        raise NotFound(
            f"checkpoint {text!r} is not a checkpoint id (ftckpt-…), a step number or an artifact name",
            param="checkpoint",
            code="checkpoint_not_found",
        )
    ckpt = await session.scalar(sa.select(Checkpoint).where(Checkpoint.model_id == model.id, condition))
    if ckpt is None:
        raise NotFound(
            f"model {model.name!r} has no checkpoint {text!r}",
            param="checkpoint",
            code="checkpoint_not_found",
        )
    return ckpt


async def job_checkpoints(
    session: AsyncSession,
    job_id: str,
    *,
    after: str | None = None,
    limit: int | None = None,
    include_deleted: bool = True,
) -> tuple[list[Checkpoint], bool]:
    """A job's checkpoints, newest step first; `after` is the id of the last one seen (a
    checkpoint of another job is a 400 `invalid_cursor`). Returns (page, has_more)."""
    query = sa.select(Checkpoint).where(Checkpoint.job_id == job_id)
    if not include_deleted:
        query = query.where(Checkpoint.deleted_at.is_(None))
    if after is not None:
        anchor = await session.scalar(
            sa.select(Checkpoint).where(Checkpoint.id == after, Checkpoint.job_id == job_id)
        )
        if anchor is None:
            raise BadRequest(
                f"after: no checkpoint {after!r} in this job", param="after", code="invalid_cursor"
            )
        query = query.where(Checkpoint.step < anchor.step)
    query = query.order_by(Checkpoint.step.desc())
    if limit is None:
        return list((await session.scalars(query)).all()), False
    return await fetch_page(session, query, limit)


async def last_job_checkpoint(session: AsyncSession, job_id: str) -> Checkpoint | None:
    """The newest checkpoint a job made, deleted or not."""
    rows, _ = await job_checkpoints(session, job_id, limit=1)
    return rows[0] if rows else None


# -- aliases ----------------------------------------------------------------------------------


def validate_alias(alias: str) -> None:
    if not ALIAS_PATTERN.match(alias) or re.fullmatch(r"step\d+", alias):
        raise BadRequest(
            f"invalid alias {alias!r}: use letters, digits, '_', '-' or '.', starting with a letter, "
            "up to 64 characters, and not of the form step<N>",
            param="alias",
            code="invalid_alias",
        )


async def set_alias(
    session: AsyncSession,
    model: ServedModel,
    alias: str,
    checkpoint: Checkpoint,
    *,
    actor: str | None = None,
) -> ModelAlias:
    """Point `alias` of `model` at `checkpoint` (insert or move); a change is recorded as an
    `AliasEvent` by `actor` (an API key id; None for the registry's own policy)."""
    validate_alias(alias)
    if checkpoint.model_id != model.id:
        raise BadRequest(
            "the checkpoint belongs to another model", param="checkpoint", code="checkpoint_mismatch"
        )
    if checkpoint.deleted_at is not None:
        raise BadRequest(
            f"checkpoint {checkpoint.id} was deleted", param="checkpoint", code="checkpoint_deleted"
        )
    if checkpoint.origin != CheckpointOrigin.STEP and alias in ("latest", "best"):
        raise BadRequest(
            f"checkpoint {checkpoint.id} came from a step that was cancelled or abandoned ({checkpoint.origin}); "
            f"'{alias}' only follows the steps jobs completed",
            param="checkpoint",
            code="checkpoint_not_aliasable",
        )
    row = await session.scalar(
        sa.select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
    )
    previous = row.checkpoint_id if row is not None else None
    if row is None:
        row = ModelAlias(model_id=model.id, alias=alias, checkpoint_id=checkpoint.id, updated_at=utcnow())
        session.add(row)
    else:
        row.checkpoint_id = checkpoint.id
        row.updated_at = utcnow()
    if previous != checkpoint.id:
        session.add(
            AliasEvent(
                model_id=model.id,
                alias=alias,
                checkpoint_id=checkpoint.id,
                previous_checkpoint_id=previous,
                actor=actor,
            )
        )
    await session.flush()
    return row


async def point_alias(
    session: AsyncSession, name: str, alias: str, checkpoint_ref: str | int, *, actor: str | None = None
) -> tuple[ServedModel, ModelAlias, Checkpoint]:
    """Point `alias` of model line `name` at a checkpoint (insert or move); flushes, never commits."""
    model = await find_model_line(session, name)
    ckpt = await find_checkpoint(session, model, checkpoint_ref)
    row = await set_alias(session, model, alias, ckpt, actor=actor)
    return model, row, ckpt


async def list_model_lines(
    session: AsyncSession, *, after: str | None, limit: int
) -> tuple[list[ServedModel], bool]:
    """Model lines, newest first; `after` is the id of the last line seen (keyset on (created_at, id))."""
    query = sa.select(ServedModel)
    return await created_page(
        session, query, ServedModel, after=after, limit=limit, newest_first=True, what="model line"
    )


async def get_model_line(session: AsyncSession, model_id: str) -> ServedModel:
    model = await session.get(ServedModel, model_id)
    if model is None:
        raise NotFound(f"no model line with id {model_id!r}", param="model_id", code="model_not_found")
    return model


async def line_checkpoints(
    session: AsyncSession, model: ServedModel, *, limit: int, include_deleted: bool = True
) -> list[Checkpoint]:
    """A line's newest `limit` checkpoints, in step order."""
    query = sa.select(Checkpoint).where(Checkpoint.model_id == model.id)
    if not include_deleted:
        query = query.where(Checkpoint.deleted_at.is_(None))
    rows = list((await session.scalars(query.order_by(Checkpoint.step.desc()).limit(limit))).all())
    return rows[::-1]


async def line_aliases(session: AsyncSession, model_ids: list[str]) -> list[tuple[ModelAlias, Checkpoint]]:
    """The aliases of these lines with the checkpoints they point at, by line then name."""
    if not model_ids:
        return []
    rows = await session.execute(
        sa.select(ModelAlias, Checkpoint)
        .join(Checkpoint, Checkpoint.id == ModelAlias.checkpoint_id)
        .where(ModelAlias.model_id.in_(model_ids))
        .order_by(ModelAlias.model_id, ModelAlias.alias)
    )
    return [(a, c) for a, c in rows.tuples().all()]


async def aliases_of_checkpoints(session: AsyncSession, checkpoint_ids: list[str]) -> dict[str, list[str]]:
    """checkpoint id → the names of the aliases pointing at it."""
    out: dict[str, list[str]] = {}
    if not checkpoint_ids:
        return out
    rows = await session.execute(
        sa.select(ModelAlias.checkpoint_id, ModelAlias.alias)
        .where(ModelAlias.checkpoint_id.in_(checkpoint_ids))
        .order_by(ModelAlias.alias)
    )
    for ckpt_id, alias in rows.tuples().all():
        out.setdefault(ckpt_id, []).append(alias)
    return out


async def alias_history(session: AsyncSession, model: ServedModel, *, limit: int) -> list[AliasEvent]:
    """A line's newest alias moves first."""
    rows = await session.scalars(
        sa.select(AliasEvent)
        .where(AliasEvent.model_id == model.id)
        .order_by(AliasEvent.id.desc())
        .limit(limit)
    )
    return list(rows.all())


async def aliased_checkpoint(session: AsyncSession, model: ServedModel, alias: str) -> Checkpoint | None:
    """The checkpoint a stored alias row points at (None without such a row)."""
    return await session.scalar(
        sa.select(Checkpoint)
        .join(ModelAlias, ModelAlias.checkpoint_id == Checkpoint.id)
        .where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
    )
