"""The anchor for `jobs.retrieve`: a bare Starlette handler doing the same single-row SELECT.

    DATABASE_URL=postgresql+asyncpg://… python bench/jobs/bare.py --port 8792

`GET /jobs/{id}` reads the job's row by primary key (the statement `GET
/v1/fine_tuning/jobs/{id}` issues) and returns it as JSON: no auth, no middleware, no response
model. Served by uvicorn with the same options as `training-control serve`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import sqlalchemy as sa
import uvicorn
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

JOBS = sa.table(
    "fine_tuning_jobs",
    *(
        sa.column(name)
        for name in (
            "id",
            "status",
            "base_model",
            "training_file",
            "dataset_id",
            "suffix",
            "seed",
            "metadata",
            "hyperparameters",
            "model_name",
            "project",
            "entity",
            "fine_tuned_model",
            "total_steps",
            "completed_steps",
            "trained_tokens",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        )
    ),
)


def _default(value: object) -> object:
    if isinstance(value, dt.datetime):
        return int(value.timestamp())
    raise TypeError


def build() -> Starlette:
    engine = create_async_engine(os.environ["DATABASE_URL"], pool_size=10)
    statement = sa.select(JOBS).where(JOBS.c.id == sa.bindparam("job_id"))

    async def retrieve(request: Request) -> Response:
        async with engine.connect() as conn:
            row = (
                (await conn.execute(statement, {"job_id": request.path_params["job_id"]})).mappings().first()
            )
        if row is None:
            return Response(b'{"error": "not found"}', status_code=404, media_type="application/json")
        return Response(orjson.dumps(dict(row), default=_default), media_type="application/json")

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    return Starlette(routes=[Route("/jobs/{job_id}", retrieve)], lifespan=lifespan)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
