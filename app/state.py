"""What a running app holds, typed: one `AppState` on `app.state`, reached one way
(`app_state(app)`, or `StateDep` in a route).

The settings and metrics exist from `create_app`; the database engine, sessionmaker and key
authenticator from the lifespan's start (reading them earlier is a bug and says so); the
gateway and the in-process worker while their lifecycles run them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.applications import Starlette

from app.config import Settings
from app.health.metrics import Metrics
from app.keys.service import Authenticator

if TYPE_CHECKING:  # types only: these packages sit above the core and import it
    from app.gateway.metrics import GatewayMetrics
    from app.gateway.proxy import Gateway
    from app.health.schema import WhileSchemaAtHead
    from app.registry.resolution import ModelResolver
    from app.training.keycheck import WandbKeyChecker
    from app.worker.metrics import WorkerMetrics

_KEY = "app_state"


class NotStarted(RuntimeError):
    """A part that exists only while the app's lifespan runs was read outside it."""


class AppState:
    def __init__(self, settings: Settings, metrics: Metrics, job_metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.job_metrics = job_metrics  # jobs, steps, W&B calls, leases, workers, dataset builds
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._authenticator: Authenticator | None = None
        self.gateway: Gateway | None = None
        self.worker: WhileSchemaAtHead | None = (
            None  # the in-process worker, paused while the schema is behind
        )
        # the features' own collectors (one set per app registry) and background tasks
        self.gateway_metrics: GatewayMetrics | None = None
        self.gateway_retention: asyncio.Task[None] | None = None
        # whether W&B accepts this process's key (a cached check; /health, /readyz, job creation)
        self.wandb_key: WandbKeyChecker | None = None

    def open(
        self,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
        authenticator: Authenticator,
    ) -> None:
        self._engine, self._sessionmaker, self._authenticator = engine, sessionmaker, authenticator

    def close(self) -> None:
        self._engine = None

    @property
    def started(self) -> bool:
        return self._engine is not None

    @property
    def engine_or_none(self) -> AsyncEngine | None:
        """The engine while the app runs (the metrics read pool gauges only then)."""
        return self._engine

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise NotStarted("the database engine exists only while the app's lifespan runs")
        return self._engine

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        if self._sessionmaker is None:
            raise NotStarted("the sessionmaker exists only while the app's lifespan runs")
        return self._sessionmaker

    @property
    def authenticator(self) -> Authenticator:
        if self._authenticator is None:
            raise NotStarted("the authenticator exists only while the app's lifespan runs")
        return self._authenticator

    @property
    def resolver(self) -> ModelResolver:
        """The registry's name resolver (its cache is the gateway's)."""
        if self.gateway is None:
            raise NotStarted("the model resolver exists only while the gateway runs")
        return self.gateway.resolver

    def wake_worker(self) -> None:
        """Something to do was just committed (a job, a build, a cancel): the in-process worker
        looks now rather than at its next poll."""
        if self.worker is not None:
            self.worker.wake()

    def attach(self, app: Starlette) -> None:
        setattr(app.state, _KEY, self)


def app_state(app: Starlette) -> AppState:
    state: AppState = getattr(app.state, _KEY)
    return state
