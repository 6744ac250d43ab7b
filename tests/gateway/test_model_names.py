"""What the gateway sends upstream as `model` is what openpipe-art 0.5.18 itself would send.

ART is asked directly (its Model / TrainableModel with a ServerlessBackend attached, no network),
and the gateway's request to a recording upstream is compared with it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI

from app.registry.models import Checkpoint
from app.state import app_state
from app.training.art_env import import_art
from tests.conftest import asgi_client
from tests.fixtures.gateway import BASE_MODEL, PROJECT, gateway_settings, running_app, seed_model
from tests.fixtures.recording_upstream import RecordingUpstream

ENTITY = "emulator-entity"


def art_sends(*, name: str, trainable: bool, step: int | None = None) -> str:
    """The model name ART 0.5.18 puts in a chat completion for this model."""
    art = import_art()
    from art.serverless.backend import ServerlessBackend

    if not trainable:
        return str(art.Model(name=name, project=PROJECT).get_inference_name(step))
    model = art.TrainableModel(name=name, project=PROJECT, entity=ENTITY, base_model=BASE_MODEL)
    backend = ServerlessBackend(api_key="unused", base_url="http://127.0.0.1:9/v1")
    object.__setattr__(model, "_backend", backend)  # what register() does, without the POST
    return str(model.get_inference_name(step))


@pytest.fixture
async def app(clean_db: str, recording_upstream: RecordingUpstream) -> AsyncIterator[FastAPI]:
    settings = gateway_settings(clean_db, recording_upstream.base_url, "key", fallback_to_base_model=True)
    async with running_app(settings) as app:
        yield app


async def _sent_model(app: FastAPI, upstream: RecordingUpstream, requested: str) -> str:
    async with asgi_client(app) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": requested, "messages": [{"role": "user", "content": "hi"}]}
        )
    assert response.status_code == 200, response.text
    body: Any = upstream.requests[-1].body
    return str(body["model"])


async def test_an_allowed_base_model_goes_upstream_as_art_names_it(
    app: FastAPI, recording_upstream: RecordingUpstream
) -> None:
    sent = await _sent_model(app, recording_upstream, BASE_MODEL)
    assert sent == art_sends(name=BASE_MODEL, trainable=False) == BASE_MODEL


@pytest.mark.parametrize(
    "requested", ["agent", "agent:latest", "agent:best", "wandb-artifact:///emulator-entity/babylon-rl/agent"]
)
async def test_a_model_line_before_its_first_checkpoint_goes_upstream_as_art_names_it(
    app: FastAPI, recording_upstream: RecordingUpstream, requested: str
) -> None:
    await seed_model(app, None, steps=())
    sent = await _sent_model(app, recording_upstream, requested)
    assert (
        sent
        == art_sends(name="agent", trainable=True)
        == "wandb-artifact:///emulator-entity/babylon-rl/agent"
    )


async def test_a_checkpoint_goes_upstream_as_art_names_its_step(
    app: FastAPI, recording_upstream: RecordingUpstream
) -> None:
    await seed_model(app, None, steps=(1, 2))
    assert await _sent_model(app, recording_upstream, "agent") == art_sends(
        name="agent", trainable=True, step=2
    )
    assert await _sent_model(app, recording_upstream, "agent:step1") == art_sends(
        name="agent", trainable=True, step=1
    )


async def test_the_base_model_fallback_sends_the_same_name_as_asking_for_the_base_model(
    app: FastAPI, recording_upstream: RecordingUpstream
) -> None:
    seeded = await seed_model(app, None, steps=(1,))
    async with app_state(app).sessionmaker() as session:
        ckpt = await session.get(Checkpoint, seeded.checkpoints[1].id)
        assert ckpt is not None
        ckpt.deleted_at = dt.datetime.now(dt.UTC)
        await session.commit()
    app_state(app).gateway.resolver.invalidate()
    sent = await _sent_model(app, recording_upstream, "agent:step1")
    assert (
        sent
        == await _sent_model(app, recording_upstream, BASE_MODEL)
        == art_sends(name=BASE_MODEL, trainable=False)
    )


async def test_a_named_alias_that_does_not_exist_is_still_404(app: FastAPI) -> None:
    await seed_model(app, None, steps=())
    async with asgi_client(app) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "agent:production", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert (response.status_code, response.json()["error"]["code"]) == (404, "model_not_found")
