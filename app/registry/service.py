"""Model lines, checkpoints and aliases: the one place that writes them."""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.errors import BadRequest, NotFound
from app.ids import new_id
from app.registry.models import Checkpoint, CheckpointOrigin, ModelAlias, ServedModel

ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")
RESERVED_ALIAS_PREFIX = "step"  # `<model>:step<N>` names a checkpoint, never an alias


def artifact_name(entity: str, project: str, name: str, step: int | None = None) -> str:
    base = f"wandb-artifact:///{entity}/{project}/{name}"
    return base if step is None else f"{base}:step{step}"


async def get_or_create_model(
    session: AsyncSession,
    *,
    entity: str,
    project: str,
    name: str,
    base_model: str,
    remote_id: str | None = None,
) -> ServedModel:
    model = await session.scalar(
        sa.select(ServedModel).where(
            ServedModel.entity == entity, ServedModel.project == project, ServedModel.name == name
        )
    )
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


def validate_alias(alias: str) -> None:
    if not ALIAS_PATTERN.match(alias) or re.fullmatch(r"step\d+", alias):
        raise BadRequest(
            f"invalid alias {alias!r}: use letters, digits, '_', '-' or '.', starting with a letter, "
            "up to 64 characters, and not of the form step<N>",
            param="alias",
            code="invalid_alias",
        )


async def set_alias(
    session: AsyncSession, model: ServedModel, alias: str, checkpoint: Checkpoint
) -> ModelAlias:
    """Point `alias` of `model` at `checkpoint` (insert or move)."""
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
    if row is None:
        row = ModelAlias(model_id=model.id, alias=alias, checkpoint_id=checkpoint.id, updated_at=utcnow())
        session.add(row)
    else:
        row.checkpoint_id = checkpoint.id
        row.updated_at = utcnow()
    await session.flush()
    return row


async def get_model_by_name(session: AsyncSession, name: str) -> ServedModel:
    model = await session.scalar(
        sa.select(ServedModel).where(ServedModel.name == name).order_by(ServedModel.created_at)
    )
    if model is None:
        raise NotFound(f"model {name!r} does not exist", param="model", code="model_not_found")
    return model
