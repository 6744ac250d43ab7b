"""Request-scoped dependencies: the app's typed state, its settings and a DB session per request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.state import AppState, app_state


def get_state(request: Request) -> AppState:
    return app_state(request.app)


def get_settings_dep(request: Request) -> Settings:
    return app_state(request.app).settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for one request. It never commits: mutating routes commit explicitly."""
    async with app_state(request.app).sessionmaker() as session:
        yield session


StateDep = Annotated[AppState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
