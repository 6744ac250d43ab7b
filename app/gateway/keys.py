"""`/v1/keys`: the admin API over stored API keys (list, create, revoke), beside `/v1/usage`.

The same operations as `training-control keys`, for operators without database access. Every
route needs the `admin` scope. A key's value is returned once, by the create call, and never
again; the list shows its prefix. Revoking through this API takes effect in this process at
once and in other replicas within `AUTH__KEY_CACHE_TTL_S`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal, Self

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, field_validator

from app.auth import require_scope
from app.db import to_unix, utcnow
from app.deps import SessionDep
from app.errors import BadRequest, error_responses
from app.keys import service
from app.keys.models import ApiKey
from app.keys.scopes import ALL_SCOPES, Scope, check_pattern, decode_scopes
from app.pagination import ListPage
from app.state import app_state

MAX_LIFETIME_S = 10 * 365 * 86400


class KeyObject(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    prefix: str = Field(description="the first characters of the key, to recognise it")
    status: Literal["active", "expired", "revoked"]
    scopes: list[Scope]
    models: list[str] | None = Field(None, description="glob patterns of the models it may call; null: all")
    rpm: int | None = None
    tpm: int | None = None
    created_at: int
    expires_at: int | None = None
    revoked_at: int | None = None

    @classmethod
    def from_row(cls, row: ApiKey) -> Self:
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            status=service.key_status(row),
            scopes=sorted(decode_scopes(row.scopes)),
            models=row.models,
            rpm=row.rpm,
            tpm=row.tpm,
            created_at=to_unix(row.created_at) or 0,
            expires_at=to_unix(row.expires_at),
            revoked_at=to_unix(row.revoked_at),
        )


class CreatedKeyObject(KeyObject):
    key: str = Field(description="the key itself; shown only in this answer")


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(default_factory=lambda: sorted(ALL_SCOPES), min_length=1)
    models: list[str] | None = Field(None, max_length=100, description="glob patterns, e.g. babylon-agent:*")
    rpm: int | None = Field(
        None, gt=0, le=service.MAX_LIMIT, description="requests per minute on chat completions"
    )
    tpm: int | None = Field(
        None, gt=0, le=service.MAX_LIMIT, description="tokens per minute on chat completions"
    )
    expires_in_s: int | None = Field(None, gt=0, le=MAX_LIFETIME_S, description="lifetime in seconds")

    @field_validator("models")
    @classmethod
    def _patterns(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [check_pattern(p) for p in value]


router = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[require_scope(Scope.admin)])


@router.get("", response_model=ListPage[KeyObject], responses=error_responses(400, 403))
async def list_keys(
    session: SessionDep, after: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> ListPage[KeyObject]:
    """Every stored key (active, expired, revoked), oldest first; never a key's value."""
    rows, has_more = await service.list_keys_page(session, after=after, limit=limit)
    return ListPage.of([KeyObject.from_row(r) for r in rows], has_more)


@router.post("", response_model=CreatedKeyObject, responses=error_responses(400, 403, 422))
async def create_key(body: KeyCreate, session: SessionDep) -> CreatedKeyObject:
    """A new key with the given scopes, model patterns, limits and lifetime; `key` is its value,
    shown in this answer only."""
    expires_at = utcnow() + dt.timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    try:
        options = service.KeyOptions(
            scopes=frozenset(body.scopes),
            models=tuple(body.models) if body.models is not None else None,
            rpm=body.rpm,
            tpm=body.tpm,
            expires_at=expires_at,
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    created = await service.create_key(session, body.name, options)
    row = await service.get_key(session, created.id)
    result = CreatedKeyObject(**KeyObject.from_row(row).model_dump(), key=created.key)
    await session.commit()
    return result


@router.delete("/{key_id}", response_model=KeyObject, responses=error_responses(403, 404))
async def revoke_key(key_id: str, request: Request, session: SessionDep) -> KeyObject:
    """Revoke a key: at once in this process, within AUTH__KEY_CACHE_TTL_S in others."""
    row = await service.get_key(session, key_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await session.flush()
    result = KeyObject.from_row(row)
    await session.commit()
    app_state(request.app).authenticator.forget()
    return result
