"""The W&B Training API routes as raw HTTP: shapes, validation, paging, auth (art-serverless.md §4, §9)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.emulator import EmulatorHandle

BASE_MODEL = "OpenPipe/Qwen3-14B-Instruct"


@pytest.fixture
def http(emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=emulator.base_url, headers={"Authorization": f"Bearer {emulator.api_key}"}, timeout=10
    ) as client:
        yield client


def _model(http: httpx.Client, name: str = "agent", **extra: Any) -> dict[str, Any]:
    body = {"entity": None, "project": "babylon-rl", "name": name, "base_model": BASE_MODEL}
    body.update(extra)
    response = http.post("/preview/models", json={"return_existing": True, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _choice(content: str = "BUY YES") -> dict[str, Any]:
    return {
        "finish_reason": "stop",
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "logprobs": {
            "content": [{"token": "token_id:33907", "bytes": [66], "logprob": -0.4, "top_logprobs": []}],
            "refusal": None,
        },
    }


def _job_body(model_id: str, rewards: tuple[float, ...] = (1.0, 0.0)) -> dict[str, Any]:
    trajectories = [
        {"messages_and_choices": [{"role": "user", "content": "hi"}, _choice()], "reward": r} for r in rewards
    ]
    return {
        "model_id": model_id,
        "trajectory_groups": [{"trajectories": trajectories}],
        "experimental_config": {"learning_rate": 1e-5},
    }


def test_health_needs_no_key_and_answers_under_root_and_v1(emulator: EmulatorHandle) -> None:
    root = emulator.base_url.removesuffix("/v1")
    for url in (f"{root}/health", f"{emulator.base_url}/health"):
        response = httpx.get(url)
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
    assert emulator.requests("health") == 2


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "Not authenticated"),
        ({"Authorization": "Bearer"}, "Not authenticated"),
        ({"Authorization": "Basic abc"}, "Not authenticated"),
        ({"Authorization": "Bearer wrong-key"}, "Invalid API key"),
    ],
)
def test_routes_need_the_bearer_key(emulator: EmulatorHandle, headers: dict[str, str], detail: str) -> None:
    response = httpx.get(f"{emulator.base_url}/preview/models/x/checkpoints", headers=headers)

    assert response.status_code == 401
    assert response.json() == {"detail": detail}
    assert response.headers["www-authenticate"] == "Bearer"


def test_any_non_empty_key_is_accepted_when_no_key_is_configured(emulator: EmulatorHandle) -> None:
    emulator.configure(api_key=None)
    response = httpx.post(
        f"{emulator.base_url}/preview/models",
        headers={"Authorization": "Bearer whatever"},
        json={"project": "p", "name": "n", "base_model": BASE_MODEL},
    )

    assert response.status_code == 200


def test_model_create_fills_entity_and_is_idempotent_on_entity_project_name(http: httpx.Client) -> None:
    first = _model(http)
    again = _model(http)
    other_project = _model(http, project="other")
    explicit = _model(http, entity="team-a")

    assert set(first) == {"id", "entity", "project", "name", "base_model", "run_id"}
    assert first["entity"] == "emulator-entity"
    assert again == first
    assert other_project["id"] != first["id"]
    assert explicit["entity"] == "team-a"
    assert explicit["id"] != first["id"]

    conflict = http.post(
        "/preview/models", json={"project": "babylon-rl", "name": "agent", "base_model": BASE_MODEL}
    )
    assert conflict.status_code == 409
    assert "already exists" in conflict.json()["detail"]


def test_model_create_rejects_unsupported_base_models_and_missing_fields(http: httpx.Client) -> None:
    unsupported = http.post(
        "/preview/models", json={"project": "p", "name": "n", "base_model": "Qwen/Qwen2.5-0.5B-Instruct"}
    )
    missing = http.post("/preview/models", json={"project": "p", "base_model": BASE_MODEL})

    assert unsupported.status_code == 400
    assert "Qwen/Qwen2.5-0.5B-Instruct" in unsupported.json()["detail"]
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "name"]


def test_checkpoint_pages_follow_limit_order_and_after(emulator: EmulatorHandle, http: httpx.Client) -> None:
    model = _model(http)
    for step in (1, 2, 3, 5, 8):
        emulator.add_checkpoint("agent", step=step, metrics={"reward": step / 10})
    url = f"/preview/models/{model['id']}/checkpoints"

    page = http.get(url, params={"limit": 2}).json()
    assert [c["step"] for c in page["data"]] == [1, 2]
    assert page["object"] == "list"
    assert page["has_more"] is True
    assert page["first_id"] == page["data"][0]["id"]
    assert page["last_id"] == page["data"][1]["id"]
    assert set(page["data"][0]) >= {"id", "step", "metrics", "created_at"}
    nxt = http.get(url, params={"limit": 2, "after": page["last_id"]}).json()
    assert [c["step"] for c in nxt["data"]] == [3, 5]
    last = http.get(url, params={"limit": 2, "after": nxt["last_id"]}).json()
    assert [c["step"] for c in last["data"]] == [8]
    assert last["has_more"] is False

    desc = http.get(url, params={"order": "desc", "limit": 1}).json()
    assert [c["step"] for c in desc["data"]] == [8]
    assert len(http.get(url).json()["data"]) == 5  # default limit 20, ascending

    for bad in ({"limit": 0}, {"limit": 101}, {"order": "sideways"}):
        assert http.get(url, params=bad).status_code == 422
    assert http.get(url, params={"after": "nope"}).status_code == 400
    assert http.get("/preview/models/unknown/checkpoints").status_code == 404


def test_delete_checkpoints_reports_deleted_and_missing_steps(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    model = _model(http)
    for step in (1, 2, 3):
        emulator.add_checkpoint("agent", step=step)

    response = http.request("DELETE", f"/preview/models/{model['id']}/checkpoints", json={"steps": [1, 3, 9]})

    assert response.json() == {"deleted_count": 2, "not_found_steps": [9]}
    assert [c["step"] for c in emulator.checkpoints("agent")] == [2]
    bad = http.request("DELETE", f"/preview/models/{model['id']}/checkpoints", json={"steps": ["x"]})
    assert bad.status_code == 422


def test_steps_are_never_reused_after_the_latest_is_deleted(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    model = _model(http)
    assert http.post("/preview/training-jobs", json=_job_body(model["id"])).status_code == 200
    http.request("DELETE", f"/preview/models/{model['id']}/checkpoints", json={"steps": [1]})

    http.post("/preview/training-jobs", json=_job_body(model["id"]))

    assert [c["step"] for c in emulator.checkpoints("agent")] == [2]


def test_delete_model_removes_it_with_its_checkpoints(emulator: EmulatorHandle, http: httpx.Client) -> None:
    model = _model(http)
    emulator.add_checkpoint("agent", step=1)

    response = http.delete(f"/preview/models/{model['id']}")

    assert response.json() == {"model_id": model["id"], "deleted_checkpoints": 1, "deleted_run": True}
    assert emulator.models() == []
    assert http.delete(f"/preview/models/{model['id']}").status_code == 404


def test_training_job_events_run_start_steps_checkpoint_end(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    emulator.configure(gradient_steps=3)
    model = _model(http)
    job = http.post("/preview/training-jobs", json=_job_body(model["id"], rewards=(1.0, 0.0, 0.5))).json()

    assert http.get(f"/preview/training-jobs/{job['id']}").json() == {"id": job["id"]}
    events = http.get(f"/preview/training-jobs/{job['id']}/events").json()["data"]
    assert [e["type"] for e in events] == ["training_started"] + ["gradient_step"] * 3 + ["training_ended"]
    assert events[0]["data"] == {"num_sequences": 3}
    for event in events[1:4]:
        assert all(isinstance(v, float) for v in event["data"].values())
        assert {"loss", "grad_norm", "learning_rate", "entropy", "num_trainable_tokens"} <= set(event["data"])
        assert event["data"]["learning_rate"] == 1e-5
        assert event["data"]["num_trainable_tokens"] == 3.0  # one logprob token per choice
    assert events[1]["data"]["loss"] > events[3]["data"]["loss"]
    [checkpoint] = emulator.checkpoints("agent")
    assert checkpoint["step"] == 1
    assert checkpoint["metrics"]["reward"] == pytest.approx(0.5)
    assert checkpoint["metrics"]["loss"] == events[3]["data"]["loss"]


def test_event_pages_follow_after_and_limit(http: httpx.Client) -> None:
    model = _model(http)
    job = http.post("/preview/training-jobs", json=_job_body(model["id"])).json()
    url = f"/preview/training-jobs/{job['id']}/events"

    first = http.get(url, params={"limit": 2}).json()
    rest = http.get(url, params={"after": first["last_id"]}).json()

    assert first["has_more"] is True
    assert [e["type"] for e in first["data"] + rest["data"]] == [
        "training_started",
        "gradient_step",
        "gradient_step",
        "training_ended",
    ]
    assert rest["has_more"] is False
    assert http.get(url, params={"after": rest["last_id"]}).json()["data"] == []
    assert http.get(url, params={"after": "bogus"}).status_code == 400
    assert http.get("/preview/training-jobs/nope/events").status_code == 404


def test_events_are_revealed_by_pace_and_the_checkpoint_precedes_training_ended(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    emulator.set_pace(3600)
    model = _model(http)
    slow = http.post("/preview/training-jobs", json=_job_body(model["id"])).json()
    assert [e["type"] for e in http.get(f"/preview/training-jobs/{slow['id']}/events").json()["data"]] == [
        "training_started"
    ]
    assert emulator.checkpoints("agent") == []

    emulator.set_pace(10)  # jobs keep the pace they were created with
    fast = http.post("/preview/training-jobs", json=_job_body(model["id"])).json()
    url = f"/preview/training-jobs/{fast['id']}/events"
    revealed = [len(http.get(url).json()["data"])]
    for _ in range(3):
        emulator.advance_time(10)
        revealed.append(len(http.get(url).json()["data"]))
    assert revealed == [1, 2, 3, 4]
    # Once training_ended can be read, the checkpoint is already there (ART reads it right after).
    assert [c["step"] for c in emulator.checkpoints("agent")] == [1]
    statuses = {j["id"]: j["status"] for j in emulator.jobs("agent")}
    assert statuses == {slow["id"]: "running", fast["id"]: "succeeded"}


@pytest.mark.parametrize(
    ("mutate", "loc_tail", "error_type"),
    [
        (lambda b: b["trajectory_groups"][0]["trajectories"][0].pop("reward"), ["reward"], "missing"),
        (
            lambda b: b["trajectory_groups"][0]["trajectories"][0]["messages_and_choices"][1].update(
                finish_reason="done"
            ),
            ["choice", "finish_reason"],
            "literal_error",
        ),
        (
            lambda b: b["trajectory_groups"][0]["trajectories"][0]["messages_and_choices"][1].pop("index"),
            ["choice", "index"],
            "missing",
        ),
        (
            lambda b: b["trajectory_groups"][0]["trajectories"][0].update(metrics={"note": "text"}),
            ["metrics", "note", "float"],
            "float_type",
        ),
        (
            lambda b: b["trajectory_groups"][0]["trajectories"][0].update(metadata={"ids": [1, 2]}),
            ["metadata", "ids", "float"],
            "float_type",
        ),
        (lambda b: b.update(trajectory_groups=[]), ["trajectory_groups"], "too_short"),
        (lambda b: b.pop("model_id"), ["model_id"], "missing"),
    ],
)
def test_training_job_payload_errors_are_422_with_locations(
    emulator: EmulatorHandle, http: httpx.Client, mutate: Any, loc_tail: list[str], error_type: str
) -> None:
    body = _job_body(_model(http)["id"])
    mutate(body)

    response = http.post("/preview/training-jobs", json=body)

    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(e["loc"][-len(loc_tail) :] == loc_tail and e["type"] == error_type for e in errors), errors
    assert all({"loc", "msg", "type"} <= set(e) for e in errors)
    assert emulator.counters()["training_jobs_total"] == 0


def test_plain_dict_turns_are_context_and_unknown_models_404(
    emulator: EmulatorHandle, http: httpx.Client
) -> None:
    model = _model(http)
    body = _job_body(model["id"])
    body["trajectory_groups"][0]["trajectories"][0]["messages_and_choices"].append({"foo": 1})

    assert http.post("/preview/training-jobs", json=body).status_code == 200
    missing = http.post("/preview/training-jobs", json=_job_body("no-such-model"))
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Model 'no-such-model' not found"}
    assert emulator.counters()["training_jobs_total"] == 1


def test_base_models_are_listed(emulator: EmulatorHandle, http: httpx.Client) -> None:
    data = http.get("/preview/base-models").json()["data"]

    assert BASE_MODEL in [m["id"] for m in data]
