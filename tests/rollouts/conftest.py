"""The rollout tests' service: the gateway on the emulator, webhooks configured (staged, not
sent: no worker runs), and a model line `agent` with steps 1-3 and `production` at step 1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import openai
import pytest
from fastapi import FastAPI

from tests.conftest import asgi_client, make_settings
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import FAST_INFERENCE, SeededModel, running_app, sdk_for, seed_model

WEBHOOK_URL = "http://127.0.0.1:9/hooks/rollouts"


@dataclass
class RolloutService:
    app: FastAPI
    http: httpx.AsyncClient
    sdk: openai.AsyncOpenAI
    agent: SeededModel


@pytest.fixture
async def rollout_service(clean_db: str, emulator: EmulatorHandle) -> AsyncIterator[RolloutService]:
    settings = make_settings(
        clean_db,
        wandb_base_url=emulator.base_url,
        wandb_api_key=emulator.api_key,
        inference=FAST_INFERENCE,
        training={"webhook_urls": [WEBHOOK_URL], "webhook_secret": "whsec_dGVzdC1yb2xsb3V0cw=="},
    )
    async with running_app(settings) as app:
        agent = await seed_model(app, emulator, "agent", steps=(1, 2, 3), aliases={"production": 1})
        sdk = sdk_for(app)
        async with asgi_client(app) as http:
            yield RolloutService(app, http, sdk, agent)
        await sdk.close()
