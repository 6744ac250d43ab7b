"""Job webhooks delivered to a real local HTTP receiver, signed the Standard Webhooks way.
(The jobs train on the in-memory W&B: these tests are about the deliveries.)"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
import sqlalchemy as sa

from app.jobs.models import WebhookDelivery
from app.state import app_state
from tests.fixtures.factories import make_dataset
from tests.fixtures.service import StartService, running_worker, wait_for_job, wait_until
from tests.training.fakes import FakeTraining

BASE = "OpenPipe/Qwen3-14B-Instruct"
SECRET = "whsec_" + base64.b64encode(b"a-test-signing-key-of-32-bytes!!").decode()


@dataclass
class Receiver:
    url: str
    # path → statuses to answer, in order (then 200)
    script: dict[str, list[int]] = field(default_factory=dict)
    received: list[tuple[str, dict[str, str], bytes, int]] = field(default_factory=list)

    def on(self, path: str) -> list[tuple[dict[str, str], bytes, int]]:
        return [(h, b, s) for p, h, b, s in self.received if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            planned = state.script.get(self.path, [])
            status = planned.pop(0) if planned else 200
            state.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body, status))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def webhook_settings(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {
        "training": {
            "webhook_urls": [f"{receiver.url}/global"],
            "webhook_secret": SECRET,
            "webhook_backoff_s": 0.05,
            **extra,
        }
    }


def verify(headers: dict[str, str], body: bytes) -> Any:
    """What a receiver does: the openai SDK checks the signature and parses the event."""
    return openai.OpenAI(api_key="unused", webhook_secret=SECRET).webhooks.unwrap(body.decode(), headers)


async def test_succeeded_job_notifies_global_and_job_urls_with_signed_retried_deliveries(
    start_service: StartService, receiver: Receiver
) -> None:
    receiver.script["/global"] = [500, 503]  # two failures, then delivered
    async with (
        start_service(run_worker=False, **webhook_settings(receiver)) as svc,
        running_worker(svc.app, trainer=FakeTraining()),
    ):
        ds = await make_dataset(svc.sessionmaker, groups=1)
        job = await svc.sdk.fine_tuning.jobs.create(
            model=BASE, training_file=ds.id, extra_body={"webhook_url": f"{receiver.url}/job"}
        )
        assert (await wait_for_job(svc.sdk, job.id)).status == "succeeded"
        await wait_until(
            lambda: len(receiver.on("/global")) == 3 and len(receiver.on("/job")) == 1, what="webhooks"
        )

        statuses = [s for _h, _b, s in receiver.on("/global")]
        assert statuses == [500, 503, 200]
        ids = {h["webhook-id"] for _p, h, _b, _s in receiver.received}
        assert len(ids) == 1  # every retry and every URL carries the same message id
        for _path, headers, body, _status in receiver.received:
            event = verify(headers, body)
            assert event.type == "fine_tuning.job.succeeded"
            assert event.data.id == job.id
        headers, body, _ = receiver.on("/job")[0]
        with pytest.raises(openai.InvalidWebhookSignatureError):
            openai.OpenAI(
                api_key="unused", webhook_secret="whsec_" + base64.b64encode(b"x" * 32).decode()
            ).webhooks.unwrap(body.decode(), headers)

        async def deliveries() -> dict[str, WebhookDelivery]:
            async with svc.sessionmaker() as session:
                return {r.url: r for r in (await session.scalars(sa.select(WebhookDelivery))).all()}

        # The receiver records the 200 before the worker commits "delivered": wait for the row.
        async def recorded() -> bool:
            return all(r.status == "delivered" for r in (await deliveries()).values())

        await wait_until(recorded, what="deliveries recorded")
        rows = await deliveries()
        assert rows[f"{receiver.url}/global"].status == "delivered"
        assert rows[f"{receiver.url}/global"].attempts == 3
        assert rows[f"{receiver.url}/global"].last_status_code == 200
        assert rows[f"{receiver.url}/job"].attempts == 1
        registry = app_state(svc.app).metrics.registry
        assert registry.get_sample_value("webhook_deliveries_total", {"outcome": "retry"}) == 2
        assert registry.get_sample_value("webhook_deliveries_total", {"outcome": "delivered"}) == 2


async def test_failed_and_cancelled_jobs_send_their_event_types(
    start_service: StartService, receiver: Receiver
) -> None:
    fake = FakeTraining()
    fake.script("fail", error="boom")
    async with start_service(run_worker=False, **webhook_settings(receiver)) as svc:
        ds = await make_dataset(svc.sessionmaker, groups=1)
        async with running_worker(svc.app, trainer=fake):
            failing = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id)
            assert (await wait_for_job(svc.sdk, failing.id)).status == "failed"
            await wait_until(lambda: len(receiver.on("/global")) == 1, what="the first webhook")
        queued = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id)
        await svc.sdk.fine_tuning.jobs.cancel(queued.id)  # no worker: the API queues its webhook
        assert len(receiver.on("/global")) == 1
        async with running_worker(svc.app, trainer=fake):  # a worker delivers what the API queued
            await wait_until(lambda: len(receiver.on("/global")) == 2, what="two webhooks")
    events = [verify(h, b) for h, b, _s in receiver.on("/global")]
    assert [(e.type, e.data.id) for e in events] == [
        ("fine_tuning.job.failed", failing.id),
        ("fine_tuning.job.cancelled", queued.id),
    ]


async def test_a_receiver_that_keeps_failing_is_given_up_after_the_last_attempt(
    start_service: StartService, receiver: Receiver
) -> None:
    receiver.script["/global"] = [500] * 10
    async with (
        start_service(run_worker=False, **webhook_settings(receiver, webhook_max_attempts=3)) as svc,
        running_worker(svc.app, trainer=FakeTraining()),
    ):
        ds = await make_dataset(svc.sessionmaker, groups=1)
        job = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id)
        await wait_for_job(svc.sdk, job.id)

        async def given_up() -> bool:
            async with svc.sessionmaker() as session:
                row = await session.scalar(sa.select(WebhookDelivery))
            return row is not None and row.status == "failed"

        await wait_until(given_up, what="the delivery to be given up")
        assert len(receiver.on("/global")) == 3
        async with svc.sessionmaker() as session:
            row = await session.scalar(sa.select(WebhookDelivery))
        assert row is not None
        assert row.attempts == 3
        assert row.last_error == "HTTP 500"
        assert (
            app_state(svc.app).metrics.registry.get_sample_value(
                "webhook_deliveries_total", {"outcome": "failed"}
            )
            == 1
        )
