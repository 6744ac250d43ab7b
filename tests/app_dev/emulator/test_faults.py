"""Fault injection and counters, observed from real HTTP clients; the /_emulator admin routes."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.emulator import EmulatorHandle, NonLoopbackConnect, RemoteEmulator, refuse_non_loopback

BASE_MODEL = "OpenPipe/Qwen3-14B-Instruct"


@pytest.fixture
def http(emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=emulator.base_url, headers={"Authorization": f"Bearer {emulator.api_key}"}, timeout=10
    ) as client:
        yield client


def _model(http: httpx.Client, name: str = "agent") -> dict[str, Any]:
    body = {"project": "babylon-rl", "name": name, "base_model": BASE_MODEL, "return_existing": True}
    result: dict[str, Any] = http.post("/preview/models", json=body).json()
    return result


def _job_body(model_id: str) -> dict[str, Any]:
    trajectories = [{"messages_and_choices": [], "reward": r} for r in (1.0, 0.0)]
    return {"model_id": model_id, "trajectory_groups": [{"trajectories": trajectories}]}


def test_status_fault_answers_w_and_b_style_for_times_then_recovers(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    model = _model(http)
    url = f"/preview/models/{model['id']}/checkpoints"
    emulator.inject("checkpoints.list", "status", status=500, detail="workflow error", times=2)

    answers = [http.get(url) for _ in range(3)]

    assert [r.status_code for r in answers] == [500, 500, 200]
    assert answers[0].json() == {"detail": "workflow error"}
    assert "retry-after" not in answers[0].headers
    assert emulator.faults()[0]["fired"] == 2
    assert emulator.counters()["faults_fired"] == {"checkpoints.list": 2}


def test_status_fault_with_skip_and_every_time(emulator: EmulatorHandle, http: httpx.Client) -> None:
    model = _model(http)
    url = f"/preview/models/{model['id']}/checkpoints"
    emulator.inject("checkpoints.list", "status", status=401, skip=1, times=None)

    codes = [http.get(url).status_code for _ in range(4)]

    assert codes == [200, 401, 401, 401]
    emulator.clear_faults()
    assert http.get(url).status_code == 200


def test_hang_fault_times_out_a_short_client_and_answers_a_patient_one(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    emulator.inject("health", "hang", seconds=30)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{emulator.base_url}/health", timeout=0.3)

    emulator.inject("health", "hang", seconds=0.2)
    assert httpx.get(f"{emulator.base_url}/health", timeout=10).status_code == 200


def test_reset_releases_a_hanging_request_as_a_dropped_connection(emulator: EmulatorHandle) -> None:
    emulator.inject("health", "hang", seconds=300)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.get, f"{emulator.base_url}/health", timeout=60)
        while not emulator.faults()[0]["fired"]:
            time.sleep(0.01)
        emulator.reset()
        with pytest.raises(httpx.RemoteProtocolError):
            pending.result(timeout=30)


def test_drop_fault_closes_the_connection_without_a_response(emulator: EmulatorHandle) -> None:
    emulator.inject("health", "drop")

    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        httpx.get(f"{emulator.base_url}/health")
    assert httpx.get(f"{emulator.base_url}/health").status_code == 200


def test_accept_then_status_creates_the_resource_but_reports_an_error(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    emulator.inject("models.create", "accept_then_status", status=503)
    emulator.inject("training_jobs.create", "accept_then_status", status=500)

    created = http.post(
        "/preview/models", json={"project": "babylon-rl", "name": "agent", "base_model": BASE_MODEL}
    )
    assert created.status_code == 503
    [model] = emulator.models()
    posted = http.post("/preview/training-jobs", json=_job_body(model["id"]))

    assert posted.status_code == 500
    assert posted.json() == {"detail": "Internal server error"}
    assert emulator.training_posts("agent") == 1
    assert [c["step"] for c in emulator.checkpoints("agent")] == [1]


def test_accept_then_drop_creates_the_job_and_drops_the_connection(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    model = _model(http)
    emulator.inject("training_jobs.create", "accept_then_drop")

    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/preview/training-jobs", json=_job_body(model["id"]))

    assert emulator.counters()["training_jobs_by_model_id"] == {model["id"]: 1}
    assert len(emulator.jobs("agent")) == 1


def test_job_faults_target_a_model_and_skip_earlier_jobs(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    a, b = _model(http, "agent-a"), _model(http, "agent-b")
    emulator.inject("training_jobs.create", "stall", model="agent-b", skip=1)
    emulator.inject("training_jobs.create", "training_failed", error_message="bad batch", model="agent-a")

    jobs = [http.post("/preview/training-jobs", json=_job_body(m["id"])).json()["id"] for m in (b, b, a, a)]
    events = {
        job_id: [
            (e["type"], e["data"]) for e in http.get(f"/preview/training-jobs/{job_id}/events").json()["data"]
        ]
        for job_id in jobs
    }

    assert events[jobs[0]][-1] == ("training_ended", {})
    assert [t for t, _ in events[jobs[1]]] == ["training_started"]
    assert events[jobs[2]] == [
        ("training_started", {"num_sequences": 2}),
        ("training_failed", {"error_message": "bad batch"}),
    ]
    assert events[jobs[3]][-1] == ("training_ended", {})
    assert [c["step"] for c in emulator.checkpoints("agent-a")] == [1]
    assert [c["step"] for c in emulator.checkpoints("agent-b")] == [1]
    assert [j["status"] for j in emulator.jobs("agent-b")] == ["succeeded", "stalled"]


def test_training_failed_after_steps_emits_that_many_gradient_steps(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    model = _model(http)
    emulator.inject("training_jobs.create", "training_failed", after_steps=1)
    job = http.post("/preview/training-jobs", json=_job_body(model["id"])).json()

    types = [e["type"] for e in http.get(f"/preview/training-jobs/{job['id']}/events").json()["data"]]

    assert types == ["training_started", "gradient_step", "training_failed"]
    assert emulator.checkpoints("agent") == []


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        (("nowhere", "status"), {}, "unknown route"),
        (("events", "explode"), {}, "unknown fault kind"),
        (("events", "stall"), {}, "applies only to route 'training_jobs.create'"),
        (("events", "hang"), {"status": 500}, "do not apply"),
        (("events", "status"), {"status": 200}, "HTTP error status"),
        (("events", "status"), {"times": 0}, "times must be"),
        (("events", "hang"), {"seconds": -1}, "seconds must be"),
    ],
)
def test_invalid_faults_are_refused_with_a_reason(
    emulator: EmulatorHandle, args: tuple[str, str], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        emulator.inject(*args, **options)
    assert emulator.faults() == []


def test_counters_count_every_attempt_and_accepted_jobs_per_model(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    a, b = _model(http, "agent-a"), _model(http, "agent-b")
    emulator.inject("training_jobs.create", "status", status=503)
    for model in (a, a, a, b):
        http.post("/preview/training-jobs", json=_job_body(model["id"]))
    http.get(f"/preview/models/{a['id']}/checkpoints")

    counters = emulator.counters()

    assert counters["requests"] == {"models.create": 2, "training_jobs.create": 4, "checkpoints.list": 1}
    assert counters["training_jobs_by_model_name"] == {"agent-a": 2, "agent-b": 1}
    assert counters["training_jobs_by_model_id"] == {a["id"]: 2, b["id"]: 1}
    assert counters["training_jobs_total"] == 3
    emulator.reset()
    assert emulator.counters()["requests"] == {}
    assert emulator.models() == []


def test_state_is_consistent_under_concurrent_clients(emulator: EmulatorHandle, http: httpx.Client) -> None:
    model = _model(http)

    def post_jobs(_: int) -> list[int]:
        with httpx.Client(headers={"Authorization": f"Bearer {emulator.api_key}"}) as client:
            codes = []
            for _ in range(5):
                codes.append(
                    client.post(
                        f"{emulator.base_url}/preview/training-jobs", json=_job_body(model["id"])
                    ).status_code
                )
                emulator.counters()  # test-side reads interleave with the server's writes
            return codes

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = [c for batch in pool.map(post_jobs, range(8)) for c in batch]

    assert codes == [200] * 40
    assert emulator.training_posts("agent") == 40
    assert [c["step"] for c in emulator.checkpoints("agent")] == list(range(1, 41))


def test_admin_routes_drive_the_emulator_over_http(emulator: EmulatorHandle, http: httpx.Client) -> None:
    remote = RemoteEmulator(emulator.base_url, emulator.api_key)
    try:
        fault = remote.inject("checkpoints.list", "status", status=429, retry_after=3)
        assert fault["kind"] == "status"
        assert remote.faults()[0]["id"] == fault["id"]
        seeded = remote.add_checkpoint("agent", step=2, metrics={"reward": 0.7})
        limited = http.get(f"/preview/models/{seeded['model_id']}/checkpoints")
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "3"
        assert remote.counters()["faults_fired"] == {"checkpoints.list": 1}
        assert remote.requests("checkpoints.list") == 1
        assert [c["step"] for c in remote.checkpoints("agent")] == [2]
        assert remote.models()[0]["id"] == seeded["model_id"]

        config = remote.configure(gradient_steps=1, stream_chunks=2)
        assert config["gradient_steps"] == 1
        assert "api_key" not in config
        remote.set_pace(100)
        http.post("/preview/training-jobs", json=_job_body(seeded["model_id"]))
        assert remote.jobs("agent")[0]["events_revealed"] == 1
        remote.advance_time(500)
        assert remote.jobs("agent")[0]["status"] == "succeeded"
        assert remote.training_posts("agent") == 1

        bad = httpx.post(
            remote.base_url.removesuffix("/v1") + "/_emulator/faults", json={"route": "events", "kind": "x"}
        )
        assert bad.status_code == 400
        assert "unknown fault kind" in bad.json()["detail"]
        bad_config = httpx.post(
            remote.base_url.removesuffix("/v1") + "/_emulator/config", json={"pace_s": -1}
        )
        assert bad_config.status_code == 400

        remote.clear_faults()
        remote.reset()
        assert remote.models() == []
        assert remote.counters()["requests"] == {}
    finally:
        remote.close()


async def test_loopback_guard_refuses_outbound_connects_and_allows_the_emulator(
    emulator: EmulatorHandle,
) -> None:
    with refuse_non_loopback() as attempts:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{emulator.base_url}/health")).status_code == 200
            with pytest.raises(httpx.ConnectError):
                await client.get("http://192.0.2.1:9/v1/health")  # TEST-NET-1: never routable
        with pytest.raises(NonLoopbackConnect):
            socket.create_connection(("192.0.2.1", 9), timeout=1)

    assert [a[0] for a in attempts] == ["192.0.2.1", "192.0.2.1"]
