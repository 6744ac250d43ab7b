"""The FastAPI application: `create_app(settings)`; `app.main:app` builds one from the environment."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute

from app import migrations
from app.adapters import GameAdapter, install
from app.auth import require_api_key
from app.babylon.adapter import ADAPTER as BABYLON
from app.config import NO_API_KEY_MESSAGE, ConfigError, Settings, load_settings
from app.dashboard.router import install_dashboard
from app.datasets.router import router as datasets_router
from app.datasets.sources import register_source
from app.db import create_engine, create_sessionmaker
from app.docs import OPENAPI_TAGS, install_docs
from app.errors import error_responses, install_error_handlers
from app.files.router import router as files_router
from app.files.source import FILE_SOURCE
from app.gateway import lifecycle as gateway_lifecycle
from app.gateway.keys import router as keys_router
from app.gateway.route import GatewayRoute
from app.gateway.router import router as gateway_router
from app.gateway.usage import router as usage_router
from app.health.metrics import Metrics
from app.health.router import router as health_router
from app.health.schema import check_schema_at_start, install_schema_error_handler
from app.jobs.router import router as jobs_router
from app.keys.scopes import parse_scopes
from app.keys.service import Authenticator, count_active_keys
from app.logs import configure_logging
from app.middleware import RequestContextMiddleware, StartupErrorMiddleware
from app.registry.router import create_router as create_models_router
from app.rollouts.router import router as rollouts_router
from app.scoring.router import router as scoring_router
from app.state import AppState, app_state
from app.training.keycheck import WandbKeyChecker
from app.trajectories.router import router as trajectories_router
from app.worker import lifecycle as worker_lifecycle
from app.worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

DESCRIPTION = """
Turns what the Babylon game's AI agents did into better agents, with the data staying in
your own databases: trajectories → local scores → GRPO datasets → durable training jobs on
W&B Serverless RL → checkpoints served through an OpenAI-compatible gateway.

Every route except `/health`, `/healthz`, `/readyz` and these docs needs
`Authorization: Bearer <key>` (the **Authorize** button). Errors always have the shape
`{"error": {"message", "type", "param", "code"}}`.
"""


# The games this service is wired to. The core reaches them only through the interfaces in
# app/adapters.py; this tuple (and the CLI's worker, which installs the same) is the one choice.
GAME_ADAPTERS: tuple[GameAdapter, ...] = (BABYLON,)


def install_extensions(adapters: Sequence[GameAdapter] = GAME_ADAPTERS) -> None:
    """Register what the core builds datasets from and hands finished jobs to, beyond its own
    generic source (pushed trajectories): uploaded files (app/files) and each game adapter."""
    register_source(FILE_SOURCE)
    for adapter in adapters:
        install(adapter)


def _operation_id(route: APIRoute) -> str:
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


async def _refuse_without_keys(state: AppState) -> None:
    """An API nobody can call, or (worse) a misconfigured one, must not start silently."""
    settings = state.settings
    if settings.environment == "development" or settings.api_keys:
        return
    async with state.sessionmaker() as session:
        active = await count_active_keys(session)
    if active == 0:
        raise ConfigError(NO_API_KEY_MESSAGE)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app_state(app)
    settings = state.settings
    if settings.migrate_on_start:
        await asyncio.to_thread(
            migrations.upgrade, settings.database_url, lock_timeout_s=settings.db.migrate_lock_timeout_s
        )
    engine = create_engine(settings)
    try:
        await check_schema_at_start(engine)
    except BaseException:
        await engine.dispose()
        raise
    sessionmaker = create_sessionmaker(engine)
    authenticator = Authenticator(
        [k.get_secret_value() for k in settings.api_keys],
        sessionmaker,
        ttl_s=settings.auth.key_cache_ttl_s,
        bootstrap_scopes=parse_scopes(settings.auth.api_keys_scopes),
    )
    state.open(engine, sessionmaker, authenticator)
    try:
        await _refuse_without_keys(state)
    except BaseException:
        await engine.dispose()
        state.close()
        raise
    state.wandb_key = WandbKeyChecker(settings)
    try:
        await gateway_lifecycle.startup(app)
        await worker_lifecycle.startup(app)
        logger.info("service.started database=%s", engine.url.get_backend_name())
        yield
    finally:
        await worker_lifecycle.shutdown(app)
        await gateway_lifecycle.shutdown(app)
        if state.wandb_key is not None:
            await state.wandb_key.close()
            state.wandb_key = None
        await engine.dispose()
        state.close()
        logger.info("service.stopped")


async def _refresh_job_gauges(state: AppState) -> None:
    async with state.sessionmaker() as session:
        await state.job_metrics.refresh(session, state.settings)


def create_app(settings: Settings, adapters: Sequence[GameAdapter] = GAME_ADAPTERS) -> FastAPI:
    app = FastAPI(
        title="training-control",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=_lifespan,
        generate_unique_id_function=_operation_id,
        # Public: /docs and /openapi.json only (contract); /docs is served offline by app/docs.py.
        docs_url=None,
        redoc_url=None,
        openapi_tags=OPENAPI_TAGS,
        responses=error_responses(500),
    )
    metrics = Metrics()
    state = AppState(settings, metrics, WorkerMetrics(metrics.registry))
    state.attach(app)
    metrics.watch_engine(lambda: state.engine_or_none)
    metrics.add_refresher(lambda: _refresh_job_gauges(state))

    install_error_handlers(app)
    install_extensions(adapters)
    install_schema_error_handler(app)
    protected: dict[str, Any] = {
        "dependencies": [Depends(require_api_key)],
        "responses": error_responses(400, 401, 413, 415, 422),
    }
    install_docs(app)
    # The operator dashboard (/dashboard, and / leads there): its own session auth, see its router.
    install_dashboard(app)
    # The gateway first: routes are matched in order, and /v1/chat/completions is the hot path
    # (each route tried before it costs ~1.5 µs; bench/proxy/README.md). Auth runs in the
    # gateway's own route class (app/gateway/route.py), not as a dependency: cheaper on the
    # proxy's hot path, and its 401s carry the overhead header too.
    app.include_router(gateway_router)
    app.include_router(health_router)
    app.include_router(files_router, **protected)
    app.include_router(trajectories_router, **protected)
    app.include_router(scoring_router, **protected)
    app.include_router(datasets_router, **protected)
    app.include_router(jobs_router, **protected)
    for adapter in adapters:
        for router in adapter.routers:
            app.include_router(router, **protected)
    # before the model routes: their GET /v1/models/{model_id:path} would match these paths
    app.include_router(rollouts_router, **protected)
    app.include_router(create_models_router(GatewayRoute))
    app.include_router(usage_router, **protected)
    app.include_router(keys_router, **protected)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.http.max_body_bytes,
        max_upload_bytes=settings.http.max_upload_bytes,
        access_log=settings.http.access_log,
    )
    app.add_middleware(StartupErrorMiddleware)
    return app


def build_app_from_env() -> FastAPI:
    """What `uvicorn app.main:app` serves: settings from the environment, logging configured."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise SystemExit(f"training-control: {exc}") from None
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    # Built lazily so importing app.main (tests, the CLI) does not read the environment.
    global _app
    if name == "app":
        if _app is None:
            _app = build_app_from_env()
        return _app
    raise AttributeError(name)
