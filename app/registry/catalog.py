"""Model listing and alias moves behind /v1/models (the hot path lives in gateway.py)."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import to_unix
from app.errors import NotFound
from app.registry.models import Checkpoint, ModelAlias, ServedModel
from app.registry.resolution import ARTIFACT_PREFIX, Resolution, model_not_found
from app.registry.service import artifact_name, set_alias

BASE_MODEL_OWNER = "wandb"
_STEP_REF = re.compile(r"^(?:step)?(\d{1,9})$")


async def find_model_line(session: AsyncSession, name: str) -> ServedModel:
    """A model line by its name or `wandb-artifact:///<entity>/<project>/<name>`."""
    if name.startswith(ARTIFACT_PREFIX):
        parts = name[len(ARTIFACT_PREFIX) :].split("/")
        if len(parts) == 3 and all(parts) and ":" not in parts[2]:
            model = await session.scalar(
                sa.select(ServedModel).where(
                    ServedModel.entity == parts[0],
                    ServedModel.project == parts[1],
                    ServedModel.name == parts[2],
                )
            )
            if model is not None:
                return model
        raise model_not_found(
            name, "name a model line: <name> or wandb-artifact:///<entity>/<project>/<name>"
        )
    model = await session.scalar(
        sa.select(ServedModel).where(ServedModel.name == name).order_by(ServedModel.created_at).limit(1)
    )
    if model is None:
        raise model_not_found(name)
    return model


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


async def point_alias(
    session: AsyncSession, name: str, alias: str, checkpoint_ref: str | int
) -> tuple[ServedModel, ModelAlias, Checkpoint]:
    """Point `alias` of model line `name` at a checkpoint (insert or move); flushes, never commits."""
    model = await find_model_line(session, name)
    ckpt = await find_checkpoint(session, model, checkpoint_ref)
    row = await set_alias(session, model, alias, ckpt)
    return model, row, ckpt


def alias_object(model: ServedModel, row: ModelAlias, ckpt: Checkpoint) -> dict[str, Any]:
    return {
        "object": "model.alias",
        "model": model.name,
        "alias": row.alias,
        "id": f"{model.name}:{row.alias}",
        "checkpoint": ckpt.id,
        "step": ckpt.step,
        "served_model": ckpt.artifact_name,
        "updated_at": to_unix(row.updated_at),
    }


def _model_entry(
    id_: str,
    created: Any,
    owned_by: str,
    *,
    served_model: str | None,
    base_model: str | None,
    checkpoint: str | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "model",
        "created": to_unix(created) if created is not None else 0,
        "owned_by": owned_by,
        "served_model": served_model,
        "base_model": base_model,
        "checkpoint": checkpoint,
        "step": step,
    }


async def list_models(session: AsyncSession, allowed_base_models: list[str]) -> list[dict[str, Any]]:
    """Every name worth offering: base models, each model line (its latest), its aliases and
    its checkpoints (not deleted). Checkpoint and job ids resolve too but are not listed."""
    entries = [
        _model_entry(name, None, BASE_MODEL_OWNER, served_model=name, base_model=None)
        for name in allowed_base_models
    ]
    models = (await session.scalars(sa.select(ServedModel).order_by(ServedModel.created_at))).all()
    checkpoints = (
        await session.scalars(
            sa.select(Checkpoint).where(Checkpoint.deleted_at.is_(None)).order_by(Checkpoint.step)
        )
    ).all()
    aliases = (
        await session.execute(
            sa.select(ModelAlias, Checkpoint)
            .join(Checkpoint, Checkpoint.id == ModelAlias.checkpoint_id)
            .where(Checkpoint.deleted_at.is_(None))
            .order_by(ModelAlias.alias)
        )
    ).all()
    by_model: dict[str, list[Checkpoint]] = {}
    for ckpt in checkpoints:
        by_model.setdefault(ckpt.model_id, []).append(ckpt)
    aliases_by_model: dict[str, list[tuple[ModelAlias, Checkpoint]]] = {}
    for alias_row, ckpt in aliases:
        aliases_by_model.setdefault(alias_row.model_id, []).append((alias_row, ckpt))
    for model in models:
        ckpts = by_model.get(model.id, [])
        named = aliases_by_model.get(model.id, [])
        latest = next((c for a, c in named if a.alias == "latest"), ckpts[-1] if ckpts else None)
        if latest is None:
            continue  # nothing servable yet
        entries.append(
            _model_entry(
                model.name,
                model.created_at,
                model.entity,
                served_model=latest.artifact_name,
                base_model=model.base_model,
                checkpoint=latest.id,
                step=latest.step,
            )
        )
        for alias_row, ckpt in named:
            entries.append(
                _model_entry(
                    f"{model.name}:{alias_row.alias}",
                    alias_row.updated_at,
                    model.entity,
                    served_model=ckpt.artifact_name,
                    base_model=model.base_model,
                    checkpoint=ckpt.id,
                    step=ckpt.step,
                )
            )
        for ckpt in ckpts:
            entries.append(
                _model_entry(
                    artifact_name(model.entity, model.project, model.name, ckpt.step),
                    ckpt.created_at,
                    model.entity,
                    served_model=ckpt.artifact_name,
                    base_model=model.base_model,
                    checkpoint=ckpt.id,
                    step=ckpt.step,
                )
            )
    return entries


def resolved_model_object(resolution: Resolution, *, served_model: str, fallback: bool) -> dict[str, Any]:
    entry = _model_entry(
        resolution.requested,
        None,
        BASE_MODEL_OWNER if resolution.is_base_model else "training-control",
        served_model=served_model,
        base_model=resolution.base_model,
        checkpoint=resolution.checkpoint_id,
        step=resolution.step,
    )
    entry["fallback"] = fallback
    return entry
