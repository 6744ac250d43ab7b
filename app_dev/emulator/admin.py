"""/_emulator/*: the test-control surface over HTTP (faults, counters, reset, settings, inspection).

No auth: the emulator is a local test double. These mirror the `EmulatorState` methods so a test
driving a separate `training-control emulator` process can do what in-process tests do.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response

from app_dev.emulator.state import EmulatorError, EmulatorState


async def _state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


StateDep = Annotated[EmulatorState, Depends(_state)]
router = APIRouter(include_in_schema=False)


def _bad_request(exc: Exception) -> EmulatorError:
    return EmulatorError(400, str(exc))


@router.post("/faults")
async def inject_fault(state: StateDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    options = dict(body)
    try:
        route = options.pop("route")
        kind = options.pop("kind")
        return state.inject(route, kind, **options).public()
    except KeyError as exc:
        raise EmulatorError(400, f"missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise _bad_request(exc) from None


@router.get("/faults")
async def list_faults(state: StateDep) -> list[dict[str, Any]]:
    return state.faults()


@router.delete("/faults", status_code=204)
async def clear_faults(state: StateDep) -> Response:
    state.clear_faults()
    return Response(status_code=204)


@router.get("/counters")
async def counters(state: StateDep) -> dict[str, Any]:
    return state.counters()


@router.post("/reset", status_code=204)
async def reset(state: StateDep) -> Response:
    state.reset()
    return Response(status_code=204)


@router.get("/config")
async def get_config(state: StateDep) -> dict[str, Any]:
    return state.config.public()


@router.post("/config")
async def set_config(state: StateDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    try:
        return state.configure(**body).public()
    except (TypeError, ValueError) as exc:
        raise _bad_request(exc) from None


@router.post("/advance", status_code=204)
async def advance_time(state: StateDep, body: Annotated[dict[str, Any], Body()]) -> Response:
    try:
        state.advance_time(float(body["seconds"]))
    except KeyError:
        raise EmulatorError(400, "missing field 'seconds'") from None
    except (TypeError, ValueError) as exc:
        raise _bad_request(exc) from None
    return Response(status_code=204)


@router.get("/models")
async def models(state: StateDep) -> list[dict[str, Any]]:
    return state.models()


@router.get("/checkpoints")
async def checkpoints(state: StateDep, model: str, project: str | None = None) -> list[dict[str, Any]]:
    return state.checkpoints(model, project=project)


@router.post("/checkpoints")
async def add_checkpoint(state: StateDep, body: Annotated[dict[str, Any], Body()]) -> JSONResponse:
    options = dict(body)
    try:
        name = options.pop("model")
        return JSONResponse(state.add_checkpoint(name, **options), status_code=201)
    except KeyError:
        raise EmulatorError(400, "missing field 'model'") from None
    except TypeError as exc:
        raise _bad_request(exc) from None


@router.get("/jobs")
async def jobs(state: StateDep, model: str | None = None) -> list[dict[str, Any]]:
    return state.jobs(model)
