"""Cursor pages in OpenAI's list envelope: `{object: "list", data, has_more, first_id, last_id}`.

One cursor form for every list: `after=<id of the last item seen>` (the page's `last_id`),
keyset pagination on the list's order (no OFFSET scans, no gaps or repeats when rows are added
meanwhile). Lists of rows with public string ids (`ftjob-…`, `file-…`, `ds-…`) order by
(created_at, id): `cursor_anchor` + `after_row`. Lists whose items are numbered within their
parent (a dataset's `grp-N`, `rej-N`, `score-N`) read the number back with `numbered_cursor`.
An unknown cursor is a 400 `invalid_cursor`.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, Protocol, Self, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import BadRequest


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T")
Row = TypeVar("Row")


class ListPage(BaseModel, Generic[T]):
    """OpenAI's list envelope (cursor pages: pass `after=<last_id>` for the next page)."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def of(cls, data: list[T], has_more: bool) -> Self:
        ids = [getattr(item, "id", None) for item in data]
        return cls(
            data=data, has_more=has_more, first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None
        )


def invalid_cursor(after: str, expected: str) -> BadRequest:
    return BadRequest(
        f"after: {after!r} is not {expected}; pass the id of the last item seen (last_id)",
        param="after",
        code="invalid_cursor",
    )


def numbered_id(prefix: str, number: int) -> str:
    """The public id of a numbered item: `grp-7`."""
    return f"{prefix}-{number}"


def numbered_cursor(after: str | None, prefix: str) -> int | None:
    """The number in an `after` cursor of the form `<prefix>-N` (None without a cursor)."""
    if after is None:
        return None
    head, sep, number = after.partition("-")
    if head != prefix or not sep or not number.isdigit():
        raise invalid_cursor(after, f"an id of the form {prefix}-N")
    return int(number)


async def cursor_anchor(session: AsyncSession, model: type[Row], after: str, *, what: str) -> Row:
    """The row named by an `after` cursor; 400 invalid_cursor when there is none."""
    anchor = await session.get(model, after)
    if anchor is None:
        raise BadRequest(f"after: no {what} with id {after!r}", param="after", code="invalid_cursor")
    return anchor


def after_row(model: Any, anchor: Any, *, newest_first: bool) -> sa.ColumnElement[bool]:
    """Rows that come after `anchor` in (created_at, id) order."""
    if newest_first:
        return sa.or_(
            model.created_at < anchor.created_at,
            sa.and_(model.created_at == anchor.created_at, model.id < anchor.id),
        )
    return sa.or_(
        model.created_at > anchor.created_at,
        sa.and_(model.created_at == anchor.created_at, model.id > anchor.id),
    )


def created_order(model: Any, *, newest_first: bool) -> tuple[Any, Any]:
    if newest_first:
        return model.created_at.desc(), model.id.desc()
    return model.created_at.asc(), model.id.asc()


async def fetch_page(session: AsyncSession, query: sa.Select[Row], limit: int) -> tuple[list[Row], bool]:
    """Up to `limit` rows of an ordered query, and whether more follow."""
    rows = list((await session.scalars(query.limit(limit + 1))).all())
    return rows[:limit], len(rows) > limit


async def created_page(
    session: AsyncSession,
    query: sa.Select[Row],
    model: type[Row],
    *,
    after: str | None,
    limit: int,
    newest_first: bool,
    what: str,
) -> tuple[list[Row], bool]:
    """One page of `query` (already filtered) in (created_at, id) order after the `after` cursor:
    the keyset list every service with public string ids answers."""
    if after is not None:
        anchor = await cursor_anchor(session, model, after, what=what)
        query = query.where(after_row(model, anchor, newest_first=newest_first))
    return await fetch_page(session, query.order_by(*created_order(model, newest_first=newest_first)), limit)
