"""The `/v1/models` listing: every name worth offering, from the registry's rows."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.keys.scopes import ModelAccess, subjects
from app.registry.models import Checkpoint, ModelAlias, ServedModel
from app.registry.schemas import ModelObject
from app.registry.service import artifact_name


async def list_models(
    session: AsyncSession, allowed_base_models: list[str], access: ModelAccess | None = None
) -> list[ModelObject]:
    """Base models, each model line (its latest), its aliases and its checkpoints (not
    deleted). Checkpoint and job ids resolve too but are not listed. With `access`, only the
    names a key may call (matched as a request for that name would be, app/keys/scopes.py)."""
    access = access or ModelAccess()
    entries = [ModelObject.of_base_model(name) for name in allowed_base_models if access.allows((name,))]
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
        # a stored `latest` row wins, else the highest live step (as name resolution does)
        latest = next((c for a, c in named if a.alias == "latest"), ckpts[-1] if ckpts else None)
        if latest is None:
            continue  # nothing servable yet
        entries.extend(_allowed(access, model, [(model.name, model.created_at, latest)]))
        entries.extend(
            _allowed(
                access, model, [(f"{model.name}:{row.alias}", row.updated_at, ckpt) for row, ckpt in named]
            )
        )
        entries.extend(
            _allowed(
                access,
                model,
                [
                    (artifact_name(model.entity, model.project, model.name, c.step), c.created_at, c)
                    for c in ckpts
                ],
            )
        )
    return entries


def _allowed(
    access: ModelAccess, model: ServedModel, names: list[tuple[str, dt.datetime, Checkpoint]]
) -> list[ModelObject]:
    return [
        ModelObject.of_checkpoint(name, created, model, ckpt)
        for name, created, ckpt in names
        if access.allows(subjects(requested=name, model_name=model.name, step=ckpt.step, base_model=None))
    ]
