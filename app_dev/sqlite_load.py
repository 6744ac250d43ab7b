"""The embedded default under its real load: one process (uvicorn, RUN_WORKER=true) on SQLite
serving the gateway with captures as fast as its clients can send, while trajectories are
pushed, a dataset builds from them and a job trains on the W&B emulator. Every answer is read
for "database is locked"; the capture writer's counters say whether it kept up.

Used by bench/reliability/sqlite_load.py (figures) and tests/e2e/test_sqlite_load.py (short).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from app import migrations
from app.config import load_settings
from app.main import create_app
from app_dev.emulator import EmulatorConfig, EmulatorServer, EmulatorState

API_KEY = "load-key-" + "l" * 24
WANDB_KEY = "load-wandb-" + "w" * 24
BASE = "OpenPipe/Qwen3-14B-Instruct"
BOARD = [
    {"role": "system", "content": "You trade on prediction markets."},
    {"role": "user", "content": "Market 42 moved. What now?"},
]


@dataclass
class LoadReport:
    duration_s: float
    concurrency: int
    chats_answered: int = 0
    chats_per_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    locked_answers: int = 0  # responses whose body mentions "database is locked"
    other_answers: dict[str, int] = field(default_factory=dict)  # status → count, non-200 (API calls too)
    captures_stored: int = 0
    captures_written: float = 0.0  # the writer's own counter
    captures_dropped: float = 0.0
    trajectories_pushed: int = 0
    dataset_status: str | None = None
    dataset_build_s: float | None = None
    job_status: str | None = None
    log_lines_locked: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _metric(text: str, name: str, labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and labels in line:
            total += float(line.split()[-1])
    return total


class _Server:
    def __init__(self, settings: Any) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(settings), lifespan="on", log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()


async def run_sqlite_load(
    workdir: Path, *, duration_s: float = 30.0, concurrency: int = 8, pace_s: float = 0.2
) -> LoadReport:
    db_url = f"sqlite+aiosqlite:///{workdir / 'load.db'}"
    await asyncio.to_thread(migrations.upgrade, db_url)
    emulator = EmulatorServer(EmulatorState(EmulatorConfig(api_key=WANDB_KEY, pace_s=pace_s))).start()
    log_path = workdir / "service.log"
    settings = load_settings(
        environment="test",
        database_url=db_url,
        api_keys=API_KEY,
        run_worker=True,
        migrate_on_start=False,
        wandb_base_url=emulator.base_url,
        wandb_api_key=WANDB_KEY,
        worker={"poll_interval_s": 0.1, "heartbeat_s": 1.0, "lease_s": 10.0},
    )
    server = _Server(settings)
    report = LoadReport(duration_s=duration_s, concurrency=concurrency)
    answered: list[str] = []
    statuses: Counter[str] = Counter()
    stop = asyncio.Event()

    import logging

    handler = logging.FileHandler(log_path)
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)

    def note(response: httpx.Response) -> None:
        statuses[str(response.status_code)] += 1
        if "database is locked" in response.text:
            report.locked_answers += 1

    async def chat(http: httpx.AsyncClient, lane: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            tid = f"traj-{lane}-{n}"
            response = await http.post(
                "/v1/chat/completions",
                json={
                    "model": BASE,
                    "messages": BOARD,
                    "metadata": {"trajectory_id": tid, "agent_id": f"agent-{lane}", "step": "0"},
                },
            )
            note(response)
            if response.status_code == 200:
                answered.append(tid)

    async def push(http: httpx.AsyncClient) -> None:
        """The game's side: each answered trajectory gets its reward, in batches."""
        sent = 0
        while not stop.is_set() or sent < len(answered):
            batch = answered[sent : sent + 200]
            if not batch:
                await asyncio.sleep(0.2)
                continue
            trajectories = [
                {
                    "messages_and_choices": [*BOARD, {"role": "assistant", "content": "BUY YES"}],
                    "reward": (hash(tid) % 100) / 100,
                    "metadata": {
                        "scenario_id": f"s{int(tid.rsplit('-', 1)[1]) // 10}",
                        "agent_id": f"agent-{tid.split('-')[1]}",
                        "trajectory_id": tid,
                    },
                }
                for tid in batch
            ]
            response = await http.post("/v1/trajectories", json={"trajectories": trajectories})
            note(response)
            if response.status_code == 200:
                sent += len(batch)
                report.trajectories_pushed += response.json().get("accepted", 0)
            await asyncio.sleep(0.5)
            if stop.is_set() and not batch:
                return

    async def build_and_train(http: httpx.AsyncClient) -> None:
        await asyncio.sleep(duration_s * 0.25)
        began = time.monotonic()
        response = await http.post("/v1/datasets", json={"source": "pushed", "min_agents": 2})
        note(response)
        if response.status_code != 200:
            report.dataset_status = f"refused {response.status_code}"
            return
        dataset_id = response.json()["id"]
        job_id: str | None = None
        while True:
            got = await http.get(f"/v1/datasets/{dataset_id}")
            note(got)
            status = got.json().get("status") if got.status_code == 200 else None
            if status in {"ready", "failed"}:
                report.dataset_status = status
                report.dataset_build_s = round(time.monotonic() - began, 2)
                break
            await asyncio.sleep(0.2)
        if report.dataset_status == "ready":
            created = await http.post(
                "/v1/fine_tuning/jobs",
                json={
                    "model": BASE,
                    "training_file": dataset_id,
                    "suffix": "load",
                    "hyperparameters": {"batch_size": 4, "n_epochs": 1},
                },
            )
            note(created)
            if created.status_code == 200:
                job_id = created.json()["id"]
        while job_id is not None:
            got = await http.get(f"/v1/fine_tuning/jobs/{job_id}")
            note(got)
            report.job_status = got.json().get("status") if got.status_code == 200 else None
            if report.job_status in {"succeeded", "failed", "cancelled"}:
                return
            await asyncio.sleep(0.5)

    try:
        server.start()
        limits = httpx.Limits(max_connections=concurrency + 8)
        async with httpx.AsyncClient(
            base_url=server.url,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=60.0,
            limits=limits,
        ) as http:
            began = time.monotonic()
            chats = [asyncio.create_task(chat(http, lane)) for lane in range(concurrency)]
            pusher = asyncio.create_task(push(http))
            trainer = asyncio.create_task(build_and_train(http))
            await asyncio.sleep(duration_s)
            stop.set()
            await asyncio.gather(*chats)
            elapsed = time.monotonic() - began
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(trainer, 120)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pusher, 60)
            metrics = (await http.get("/metrics")).text
        server.stop()  # the lifespan flushes the writers
        server_stopped = True
    finally:
        if not locals().get("server_stopped"):
            with contextlib.suppress(Exception):
                server.stop()
        emulator.stop()
        logging.getLogger().removeHandler(handler)
        handler.close()
    report.chats_answered = len(answered)
    report.chats_per_s = round(len(answered) / elapsed, 1)
    report.statuses = dict(statuses)
    report.other_answers = {k: v for k, v in statuses.items() if k != "200"}
    report.captures_written = _metric(
        metrics, "gateway_writer_rows_written_total", 'table="captured_completions"'
    )
    report.captures_dropped = _metric(metrics, "gateway_writer_dropped_total", 'table="captured_completions"')
    import sqlite3

    with contextlib.closing(sqlite3.connect(workdir / "load.db")) as conn:
        report.captures_stored = conn.execute("SELECT count(*) FROM captured_completions").fetchone()[0]
    report.log_lines_locked = len(re.findall("database is locked", log_path.read_text(errors="replace")))
    return report


def describe(report: LoadReport) -> str:
    return (
        f"{report.concurrency} clients for {report.duration_s:.0f}s: {report.chats_answered} completions "
        f"({report.chats_per_s}/s), captures stored {report.captures_stored} (dropped "
        f"{report.captures_dropped:.0f}), 'database is locked' in answers {report.locked_answers} / in "
        f"logs {report.log_lines_locked}; non-200 {report.other_answers}; trajectories pushed "
        f"{report.trajectories_pushed}; dataset {report.dataset_status} in {report.dataset_build_s}s; "
        f"job {report.job_status}; load average {os.getloadavg()[0]:.2f}"
    )
