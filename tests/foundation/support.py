"""Helpers for the foundation tests: subprocesses with a clean environment, free ports,
and a test-only router that exercises the foundation through real routes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, File, Form, UploadFile
from pydantic import BaseModel

from app.auth import require_api_key
from app.config import Settings
from app.deps import SessionDep
from app.keys import service as keys_service
from app.keys.models import ApiKey
from app.main import create_app

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLI = str(BIN / "training-control")

# Settings a developer's shell (or CI) may export; subprocess tests start from none of them.
_SETTING_PREFIXES = (
    "DATABASE_URL",
    "BABYLON_",
    "WANDB_",
    "API_KEYS",
    "RUN_WORKER",
    "MIGRATE_ON_START",
    "LOG_",
    "ENVIRONMENT",
    "DB__",
    "HTTP__",
    "AUTH__",
    "WORKER__",
    "TRAINING__",
    "INFERENCE__",
)


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_SETTING_PREFIXES)}
    env.update(values)
    return env


def run(
    args: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sync_url(async_url: str) -> str:
    """The psql/psycopg-free form the CLI accepts from operators (plain postgresql://)."""
    return async_url.replace("postgresql+asyncpg://", "postgresql://", 1)


class ItemIn(BaseModel):
    name: str


def make_test_router() -> APIRouter:
    """Routes that exist only in tests: they drive the foundation through the normal stack."""
    router = APIRouter(prefix="/v1/_test", tags=["test"])

    @router.post("/keys", status_code=201)
    async def create_test_key(body: ItemIn, session: SessionDep) -> dict[str, Any]:
        """A read then a write in one transaction, through the normal session dependency:
        the pattern that fails with "database is locked" on SQLite without BEGIN IMMEDIATE."""
        same_name = await session.scalar(
            sa.select(sa.func.count()).select_from(ApiKey).where(ApiKey.name == body.name)
        )
        created = await keys_service.create_key(session, f"{body.name}-{same_name}")
        await session.commit()
        return {"id": created.id}

    @router.post("/duplicate-keys")
    async def insert_duplicate_keys(session: SessionDep) -> None:
        for i in range(2):
            session.add(ApiKey(id=f"key-dup-{i}", name="dup", prefix="x", key_hash="same-hash-value"))
        await session.flush()

    @router.post("/items")
    async def echo_item(body: ItemIn) -> dict[str, str]:
        return {"name": body.name}

    @router.post("/pairs")
    async def echo_pair(left: ItemIn, right: ItemIn) -> dict[str, str]:
        """Two body parameters: FastAPI embeds them as {"left": …, "right": …}."""
        return {"left": left.name, "right": right.name}

    @router.get("/items/{item_id}")
    async def get_item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    @router.post("/uploads")
    async def upload(file: UploadFile = File(...), purpose: str = Form(...)) -> dict[str, Any]:
        return {"size": len(await file.read()), "purpose": purpose}

    @router.get("/boom")
    async def boom() -> dict[str, str]:
        raise RuntimeError("internal detail: password=hunter2 at /srv/app/secret.py")

    @router.get("/log")
    async def log_lines() -> dict[str, str]:
        import asyncio
        import logging

        log = logging.getLogger("tests.foundation.route")
        log.info("route.first")

        async def child() -> None:
            log.warning("route.child_task")

        await asyncio.create_task(child())
        log.info("route.last")
        return {"ok": "yes"}

    return router


def create_test_app(settings: Settings) -> FastAPI:
    """The real app plus the test routers, protected like every product router."""
    app = create_app(settings)
    app.include_router(make_test_router(), dependencies=[Depends(require_api_key)])
    # A prefix given at include time, not on the router: metrics must still see the full template.
    included = APIRouter()

    @included.get("/things/{thing_id}")
    async def get_thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    app.include_router(included, prefix="/v1/_inc", dependencies=[Depends(require_api_key)])
    return app
