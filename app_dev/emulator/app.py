"""The emulator's FastAPI app: W&B Training API routes under /v1 plus the /_emulator admin routes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app_dev.emulator.admin import router as admin_router
from app_dev.emulator.chat import completion_body, generate, stream_chunks
from app_dev.emulator.middleware import FaultMiddleware
from app_dev.emulator.schemas import ChatCompletionCreate, CheckpointDelete, ModelCreate, TrainingJobCreate
from app_dev.emulator.state import EmulatorError, EmulatorState

_ARTIFACT = re.compile(r"^wandb-artifact:///([^/]+)/([^/]+)/([^/:]+)(?::(?:step(\d+)|(latest)))?$")


async def get_state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


StateDep = Annotated[EmulatorState, Depends(get_state)]


async def require_key(request: Request, state: StateDep) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise EmulatorError(401, "Not authenticated")
    if not state.check_key(key.strip()):
        raise EmulatorError(401, "Invalid API key")


api = APIRouter(dependencies=[Depends(require_key)])


@api.post("/preview/models")
async def create_model(body: ModelCreate, state: StateDep) -> dict[str, Any]:
    return state.create_model(
        entity=body.entity,
        project=body.project,
        name=body.name,
        base_model=body.base_model,
        return_existing=body.return_existing,
    )


@api.delete("/preview/models/{model_id}")
async def delete_model(model_id: str, state: StateDep) -> dict[str, Any]:
    return state.delete_model(model_id)


@api.post("/preview/models/{model_id}/log", status_code=204)
async def log_model(model_id: str, state: StateDep) -> Response:
    state.list_checkpoints(model_id, limit=1)  # 404 for an unknown model; the data is not kept
    return Response(status_code=204)


@api.get("/preview/models/{model_id}/checkpoints")
async def list_checkpoints(
    model_id: str,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "asc",
    after: str | None = None,
) -> dict[str, Any]:
    return state.list_checkpoints(model_id, limit=limit, order=order, after=after)


@api.delete("/preview/models/{model_id}/checkpoints")
async def delete_checkpoints(model_id: str, body: CheckpointDelete, state: StateDep) -> dict[str, Any]:
    return state.delete_checkpoints(model_id, body.steps)


@api.get("/preview/base-models")
async def list_base_models(state: StateDep) -> dict[str, Any]:
    data = [{"id": name, "object": "base_model"} for name in state.config.base_models]
    return {"object": "list", "data": data, "has_more": False}


@api.post("/preview/training-jobs")
async def create_training_job(body: TrainingJobCreate, state: StateDep) -> dict[str, Any]:
    return state.create_training_job(body)


@api.get("/preview/training-jobs/{job_id}")
async def get_training_job(job_id: str, state: StateDep) -> dict[str, Any]:
    return state.get_training_job(job_id)


@api.get("/preview/training-jobs/{job_id}/events")
async def list_events(
    job_id: str,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    return state.list_events(job_id, after=after, limit=limit)


def _check_served_model(state: EmulatorState, name: str) -> None:
    if name in state.config.base_models:
        return
    match = _ARTIFACT.match(name)
    if match is not None:
        entity, project, model, step = match.group(1), match.group(2), match.group(3), match.group(4)
        if state.find_served_checkpoint(entity, project, model, int(step) if step else None):
            return
    raise EmulatorError(404, f"Model '{name}' not found")


async def chat_completions(state: StateDep, body: Annotated[ChatCompletionCreate, Body()]) -> Response:
    _check_served_model(state, body.model)
    config = state.config
    completion = generate(body, completion_tokens=config.completion_tokens, skill=config.skill(body.model))
    if not body.stream:
        return JSONResponse(completion_body(completion, body))

    async def events() -> AsyncIterator[bytes]:
        for index, chunk in enumerate(stream_chunks(completion, body, config.stream_chunks)):
            if index and config.stream_delay_s:
                await asyncio.sleep(config.stream_delay_s)
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def health() -> dict[str, str]:
    return {"status": "ok", "service": "wandb-training-emulator"}


api.add_api_route("/chat/completions", chat_completions, methods=["POST"], response_model=None)
# Clients whose base URL lacks /v1 still reach chat and health.
root = APIRouter()
root.add_api_route(
    "/chat/completions",
    chat_completions,
    methods=["POST"],
    response_model=None,
    dependencies=[Depends(require_key)],
    include_in_schema=False,
)
root.add_api_route("/health", health, methods=["GET"])
root.add_api_route("/v1/health", health, methods=["GET"])
root.add_api_route("/v1/system-check", health, methods=["GET"], include_in_schema=False)


def _error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EmulatorError)
    headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)


def create_emulator_app(state: EmulatorState | None = None) -> FastAPI:
    """A fresh app over `state` (a new default state when omitted: see `app.state.emulator`)."""
    application = FastAPI(
        title="W&B Training API emulator",
        description="Development and test double of https://api.training.wandb.ai/v1 (openpipe-art 0.5.18).",
        version="0.1.0",
    )
    application.state.emulator = state or EmulatorState()
    application.add_exception_handler(EmulatorError, _error_response)
    application.include_router(root)
    application.include_router(api, prefix="/v1")
    application.include_router(admin_router, prefix="/_emulator")
    application.add_middleware(FaultMiddleware, state=application.state.emulator)
    return application
