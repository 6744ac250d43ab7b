"""The operator commands (`jobs`, `datasets`, `models`, `aliases`) against a running service:
the app with its worker, served on a real loopback port, training real jobs on the W&B emulator.

The CLI runs in a thread of the test's process (its blocking HTTP calls reach the server in the
event loop); one test runs the installed console script as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from app.cli import main
from app.cli.exit_codes import ExitCode
from tests.conftest import TEST_API_KEY
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.factories import make_dataset
from tests.fixtures.service import Service, StartService, wait_for_job

BASE = "OpenPipe/Qwen3-14B-Instruct"
CLI = str(Path(sys.executable).parent / "training-control")


@dataclass
class Served:
    svc: Service
    url: str


@contextlib.asynccontextmanager
async def serve_on_a_port(app: FastAPI) -> AsyncIterator[str]:
    """Serve an app whose lifespan already runs (start_service) on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # pytest owns signals
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), task.result()
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


@pytest.fixture
async def served(start_service: StartService, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    for name in ("TRAINING_CONTROL_URL", "TRAINING_CONTROL_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    async with start_service() as svc, serve_on_a_port(svc.app) as url:
        yield Served(svc, url)


async def cli(
    capsys: pytest.CaptureFixture[str], *args: str, url: str | None = None, key: str | None = TEST_API_KEY
) -> tuple[int, str, str]:
    argv = list(args)
    if url is not None:
        argv += ["--base-url", url]
    if key is not None:
        argv += ["--api-key", key]
    capsys.readouterr()
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


async def create_job(svc: Service, *, groups: int = 4, suffix: str = "cli", **hp: Any) -> str:
    dataset = await make_dataset(svc.sessionmaker, groups=groups, per_group=3)
    job = await svc.sdk.fine_tuning.jobs.create(
        model=BASE,
        training_file=dataset.id,
        suffix=suffix,
        method={  # type: ignore[typeddict-item]
            "type": "reinforcement",
            "reinforcement": {"hyperparameters": {"groups_per_step": 2, **hp}},
        },
    )
    return job.id


# -- jobs follow -----------------------------------------------------------------------------


async def test_jobs_follow_shows_a_bar_per_step_the_losses_and_the_outcome(
    served: Served, emulator: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator.set_pace(0.05)
    job_id = await create_job(served.svc)
    code, out, err = await cli(capsys, "jobs", "follow", job_id, "--interval", "0.1", url=served.url)
    assert code == ExitCode.OK, err
    lines = out.splitlines()
    assert lines[0].startswith(f"Following {job_id} ({BASE}, 2 steps")
    # piped output: one finished bar line per step, with both gradient steps and their loss
    bars = [line for line in lines if line.startswith("  step ")]
    assert [b.split()[1] for b in bars] == ["1/2", "2/2"], out
    for line in bars:
        assert "▕" + "█" * 24 + "▏ 2/2 gradient steps" in line, line
        assert "loss " in line, line
        assert "grad_norm " in line, line
    checkpoints = [line.strip() for line in lines if line.strip().startswith("checkpoint ")]
    assert len(checkpoints) == 2
    assert checkpoints[1].startswith(f"checkpoint wandb-artifact:///{emulator.entity}/babylon-rl/cli:step2")
    assert "train_loss=" in checkpoints[1]
    assert any("Fine-tuning job started" in line for line in lines)
    assert lines[-1].startswith(f"✓ {job_id} succeeded in ")
    assert lines[-1].endswith(f"fine_tuned_model = wandb-artifact:///{emulator.entity}/babylon-rl/cli:step2")


async def test_jobs_follow_exits_10_when_the_job_fails(
    served: Served, emulator: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator.inject("training_jobs.create", "training_failed", error_message="CUDA OOM", after_steps=1)
    job_id = await create_job(served.svc)
    code, out, _ = await cli(capsys, "jobs", "follow", job_id, "--interval", "0.1", url=served.url)
    assert code == ExitCode.JOB_FAILED == 10
    assert out.splitlines()[-1].startswith(f"✗ {job_id} failed (training_failed): ")
    assert "CUDA OOM" in out.splitlines()[-1]


async def test_jobs_follow_exits_11_when_the_job_is_cancelled(
    start_service: StartService, capsys: pytest.CaptureFixture[str]
) -> None:
    # No worker: the job stays queued, so the cancel takes effect at once (a running job would
    # stop only at its next safe point, which is the runner's business, tested in tests/jobs).
    async with start_service(run_worker=False) as svc, serve_on_a_port(svc.app) as url:
        job_id = await create_job(svc)
        code, out, _ = await cli(capsys, "jobs", "cancel", job_id, url=url)
        assert code == 0
        assert out.strip() == f"cancelled {job_id}"
        code, out, _ = await cli(capsys, "jobs", "follow", job_id, "--interval", "0.1", url=url)
    assert code == ExitCode.JOB_CANCELLED == 11
    assert out.splitlines()[-1] == f"■ {job_id} cancelled after 0 of 2 steps"


async def test_jobs_follow_json_prints_every_event_then_the_job_as_json_lines(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = await create_job(served.svc, groups=2)
    code, out, _ = await cli(capsys, "jobs", "follow", job_id, "--json", "--interval", "0.1", url=served.url)
    assert code == 0
    objects = [json.loads(line) for line in out.splitlines()]
    events, job = objects[:-1], objects[-1]
    assert {e["object"] for e in events} == {"fine_tuning.job.event"}
    assert len({e["id"] for e in events}) == len(events)  # each event once
    assert [e["created_at"] for e in events] == sorted(e["created_at"] for e in events)
    assert sum(e["type"] == "metrics" for e in events) == 2  # one step, two gradient steps
    assert (job["object"], job["id"], job["status"]) == ("fine_tuning.job", job_id, "succeeded")
    api_events = (await served.svc.sdk.fine_tuning.jobs.list_events(job_id, limit=100)).data
    assert {e["id"] for e in events} == {e.id for e in api_events}


# -- jobs list / show, datasets, models, aliases ------------------------------------------------


async def test_jobs_list_and_show_render_tables_and_json(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = await create_job(served.svc, groups=2)
    done = await wait_for_job(served.svc.sdk, job_id)
    assert done.status == "succeeded"

    code, out, _ = await cli(capsys, "jobs", "list", url=served.url)
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split() == ["ID", "STATUS", "BASE", "MODEL", "STEPS", "FINE-TUNED", "MODEL", "CREATED"]
    assert row.split()[:4] == [job_id, "succeeded", BASE, "1/1"]
    assert done.fine_tuned_model in row

    code, out, _ = await cli(capsys, "jobs", "show", job_id, url=served.url)
    assert code == 0
    assert f"id:               {job_id}" in out
    assert "status:           succeeded" in out
    assert "steps:            1/1 ▕" in out
    assert f"fine-tuned model: {done.fine_tuned_model}" in out
    assert "STEP  CHECKPOINT" in out

    code, out, _ = await cli(capsys, "jobs", "show", job_id, "--json", url=served.url)
    shown = json.loads(out)
    assert shown["job"]["id"] == job_id
    assert [c["step_number"] for c in shown["checkpoints"]] == [1]

    code, out, _ = await cli(capsys, "jobs", "list", "--json", "--limit", "1", url=served.url)
    assert json.loads(out)["data"][0]["id"] == job_id


async def test_datasets_list_and_show(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = await make_dataset(served.svc.sessionmaker, groups=3, per_group=3)
    code, out, _ = await cli(capsys, "datasets", "list", url=served.url)
    assert code == 0
    assert out.splitlines()[1].split()[:6] == [dataset.id, "ready", dataset.source, "3", "9", "9"]
    code, out, _ = await cli(capsys, "datasets", "show", dataset.id, url=served.url)
    assert code == 0
    assert f"id:              {dataset.id}" in out
    assert "trainable turns: 9" in out
    code, out, _ = await cli(capsys, "datasets", "show", dataset.id, "--json", url=served.url)
    assert json.loads(out)["group_count"] == 3


async def test_models_list_and_aliases_set_move_what_the_gateway_serves(
    served: Served, emulator: EmulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = await create_job(served.svc, groups=4, suffix="aliased")
    assert (await wait_for_job(served.svc.sdk, job_id)).status == "succeeded"
    step1 = f"wandb-artifact:///{emulator.entity}/babylon-rl/aliased:step1"

    code, out, _ = await cli(capsys, "aliases", "set", "aliased", "production", "1", url=served.url)
    assert code == 0, out
    assert out.strip() == f"aliased:production → {step1} (step 1)"

    code, out, _ = await cli(capsys, "models", "list", url=served.url)
    assert code == 0
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert rows["aliased:production"] == step1
    assert rows[BASE] == BASE
    served_model = await served.svc.http.get("/v1/models/aliased:production")
    assert served_model.json()["served_model"] == step1


# -- errors: one line and an exit code each -----------------------------------------------------


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_an_unreachable_service_is_one_line_and_exit_5(capsys: pytest.CaptureFixture[str]) -> None:
    url = _closed_port_url()
    code, out, err = await cli(capsys, "jobs", "list", url=url)
    assert code == ExitCode.UNREACHABLE == 5
    assert out == ""
    assert err.splitlines() == [
        f"training-control: cannot reach the service at {url} ([Errno 111] Connection refused): "
        "is `training-control serve` running there? Set --base-url or TRAINING_CONTROL_URL"
    ]


async def test_a_refused_key_is_one_line_and_exit_6(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await cli(capsys, "models", "list", url=served.url, key="wrong-key")
    assert code == ExitCode.UNAUTHORIZED == 6
    assert len(err.splitlines()) == 1
    assert "(the key was refused: pass --api-key or set TRAINING_CONTROL_API_KEY)" in err
    code, _, err = await cli(capsys, "jobs", "list", url=served.url, key=None)
    assert code == 6
    assert "(no key was given: pass --api-key or set TRAINING_CONTROL_API_KEY)" in err


async def test_an_unknown_job_or_dataset_is_one_line_and_exit_7(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (
        ("jobs", "show", "ftjob-nope"),
        ("jobs", "follow", "ftjob-nope"),
        ("datasets", "show", "ds-nope"),
    ):
        code, out, err = await cli(capsys, *args, url=served.url)
        assert code == ExitCode.NOT_FOUND == 7, args
        assert out == ""
        assert len(err.splitlines()) == 1
        assert err.startswith("training-control: ")
        assert "nope" in err


async def test_another_refusal_is_exit_8_with_the_services_message(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await cli(capsys, "jobs", "list", "--limit", "0", url=served.url)
    assert code == ExitCode.API_ERROR == 8
    assert err.startswith("training-control: GET /v1/fine_tuning/jobs → 422 invalid_value: limit")


async def test_the_url_and_key_come_from_the_environment_like_the_sdk(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINING_CONTROL_URL", served.url + "/v1")  # the SDK's form works too
    monkeypatch.setenv("TRAINING_CONTROL_API_KEY", TEST_API_KEY)
    code, out, err = await cli(capsys, "models", "list", key=None)
    assert code == 0, err
    assert out.startswith("MODEL")


async def test_the_console_script_talks_to_a_served_port(served: Served) -> None:
    proc = await asyncio.to_thread(
        subprocess.run,
        [CLI, "jobs", "list", "--base-url", served.url],
        env={"PATH": "/usr/bin:/bin", "TRAINING_CONTROL_API_KEY": TEST_API_KEY},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "no fine-tuning jobs"
