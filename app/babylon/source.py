"""The game's trajectory source (`POST /v1/datasets {"source": "babylon"}`): the game's
Postgres, read by `BabylonBuild` (app/babylon/dataset_build.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.babylon.dataset_build import BabylonBuild
from app.babylon.scorers import DEFAULT_SCORER
from app.config import Settings
from app.datasets.models import Dataset
from app.datasets.schemas import DatasetCreate
from app.datasets.service import create_dataset, parse_params
from app.errors import BadRequest, StoredError, stored_error
from app.scoring.registry import get_scorer

NAME = "babylon"


def _redact(message: str, url: str | None) -> str:
    """Drivers may quote parts of the connection string; the game DB's password never leaves."""
    if url:
        password = sa.engine.make_url(url).password
        if password:
            message = message.replace(str(password), "***")
    return message


def game_database_url(settings: Settings) -> str:
    if not settings.babylon_database_url:
        raise BadRequest(
            "the Babylon source is not configured: set BABYLON_DATABASE_URL to the game's Postgres",
            param="source",
            code="babylon_not_configured",
        )
    return settings.babylon_database_url


class BabylonSource:
    name = NAME
    default_scorer: str | None = DEFAULT_SCORER

    def check_params(self, params: DatasetCreate) -> None:
        if params.scenario_ids is not None:
            raise ValueError("scenario_ids select pushed trajectories (source='pushed')")

    def prepare(self, settings: Settings, params: DatasetCreate) -> dict[str, Any]:
        game_database_url(settings)
        scorer = get_scorer(params.scorer or DEFAULT_SCORER, params.scorer_version)
        # pin "newest" at creation: a rebuild scores the same way
        extra: dict[str, Any] = {"scorer_version": scorer.version}
        if params.write_scores is None:
            extra["write_scores"] = settings.babylon.write_scores
        return extra

    def build(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        dataset_id: str,
        params: DatasetCreate,
        stored: dict[str, Any],
    ) -> BabylonBuild:
        return BabylonBuild(
            sessionmaker,
            game_database_url(settings),
            dataset_id,
            params,
            get_scorer(params.scorer or DEFAULT_SCORER, params.scorer_version),
            write_back=bool(stored.get("write_scores")),
        )

    def describe_error(self, exc: BaseException, settings: Settings) -> StoredError | None:
        url = settings.babylon_database_url
        if isinstance(exc, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)):
            message = f"reading the game's database failed: {type(exc).__name__}: {exc}"
            return stored_error("babylon_unavailable", _redact(message, url)[:500])
        return stored_error("build_failed", _redact(f"{type(exc).__name__}: {exc}", url)[:500])


SOURCE = BabylonSource()


async def create_babylon_dataset(
    session: AsyncSession, settings: Settings, params: DatasetCreate | Mapping[str, Any]
) -> Dataset:
    """A queued dataset built from the game's Postgres (`params.source` must be "babylon").

    `params` (a DatasetCreate or an equivalent dict) selects rows by `window_ids`,
    `start_time`/`end_time` or `trajectory_ids` (a `training_batches` row's JSON list), with
    `include_used`, `scorer`, `min_agents`, `max_group_size`, `drop_equal_rewards`. Raises
    BadRequest `babylon_not_configured` when BABYLON_DATABASE_URL is unset and
    `unknown_scorer` for a scorer that is not registered.
    """
    parsed = parse_params({"source": NAME, **params} if isinstance(params, Mapping) else params)
    if parsed.source != NAME:
        raise BadRequest("create_babylon_dataset builds from the game's database", param="source")
    return await create_dataset(session, settings, parsed)
