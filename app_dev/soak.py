"""The scaled-out shape under faults: API replicas (`training-control serve`, RUN_WORKER=false)
and `training-control worker` processes on one throwaway Postgres, the W&B emulator (in this
process, paced so steps take seconds) as W&B, a webhook receiver, jobs created through the API
(some with `Idempotency-Key`, some cancelled) and gateway traffic with captures, while a chaos
task kill -9s workers and replicas (restarting each), restarts Postgres once and injects W&B
faults. At the end the invariants are read from the emulator's counters and the database.

Used by bench/reliability/soak.py (the full run) and tests/e2e/test_soak.py (a short one).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from app import migrations
from app.datasets.models import Dataset, DatasetGroup
from app.gateway.models import CapturedCompletion, GatewayRequest
from app.jobs.models import FineTuningJob, JobStep
from app.registry.service import get_or_create_model, record_checkpoint
from app_dev.emulator import EmulatorConfig, EmulatorServer, EmulatorState
from app_dev.throwaway_pg import ThrowawayPostgres, free_port

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "soak-key-" + "s" * 24
WANDB_KEY = "soak-wandb-" + "w" * 24
WEBHOOK_SECRET = "soak-webhook-secret-" + "h" * 16
BASE = "OpenPipe/Qwen3-14B-Instruct"
SERVED = "soak-agent"
PROJECT = "soak"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
KILL_BUFFER_WINDOW_S = 2.0
WRITER_MAX_BACKOFF_S = 5.0  # app/gateway/writer.py _MAX_BACKOFF_S


@dataclass
class SoakConfig:
    replicas: int = 2
    workers: int = 3
    jobs: int = 40
    steps: int = 3  # dataset groups; batch_size 1 → one step each
    kills: int = 20
    min_replica_kills: int = 0  # at least this many of the kills hit a replica
    postgres_restart: bool = True
    postgres_down_s: float = 5.0
    wandb_faults: bool = True
    pace_s: float = 0.5  # seconds between a training job's events on the emulator
    chaos_s: float = 240.0  # kills are spread over this window
    idempotent_every: int = 3  # every Nth job is created with an Idempotency-Key (sent twice)
    cancel_every: int = 7  # every Nth job is cancelled a little after it is created
    chat_concurrency: int = 2
    flush_interval_s: float = 0.2
    lease_s: float = 3.0
    timeout_s: float = 900.0  # all jobs terminal by then, or the soak fails
    seed: int = 7


@dataclass
class Kill:
    kind: str  # worker | replica
    at: float
    resumed_s: float | None = None


@dataclass
class SoakReport:
    config: dict[str, Any]
    duration_s: float = 0.0
    jobs: dict[str, int] = field(default_factory=dict)  # status → count
    acknowledged_jobs: int = 0
    lost_jobs: list[str] = field(default_factory=list)
    stuck_jobs: list[str] = field(default_factory=list)
    double_posts: dict[str, int] = field(default_factory=dict)  # job → W&B POSTs beyond its steps
    idempotency_keys: int = 0
    idempotency_violations: dict[str, int] = field(default_factory=dict)
    chats_answered: int = 0
    chats_failed: dict[str, int] = field(default_factory=dict)  # status or error → count
    captures_stored: int = 0
    captures_duplicated: int = 0
    captures_missing: int = 0
    # of the missing, those answered by a replica within a flush interval before its kill -9: what
    # the write-ahead spool (app/gateway/spool.py) keeps; a violation like any other missing row
    captures_missing_in_killed_buffer: int = 0
    request_log_missing: int = 0  # answered completions without exactly one 200 request-log row
    request_log_duplicated: int = 0
    spool_files_left: int = 0  # spool files no replica replayed by the end
    webhooks_missing: list[str] = field(default_factory=list)
    webhook_deliveries: int = 0
    kills: list[dict[str, Any]] = field(default_factory=list)
    resume_p50_s: float | None = None
    resume_max_s: float | None = None
    resume_by_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    captures_missing_detail: list[str] = field(default_factory=list)  # first few, for diagnosis
    chats_during_outage: dict[str, int] = field(default_factory=dict)  # outcome → count, Postgres down
    postgres_restarts: int = 0
    wandb_faults_fired: dict[str, int] = field(default_factory=dict)
    api_5xx: dict[str, int] = field(default_factory=dict)  # "status code" → count (retried)
    crashed: dict[str, int] = field(default_factory=dict)  # processes that exited unasked (restarted)
    logs: str = ""

    def violations(self) -> list[str]:
        found = []
        if self.lost_jobs:
            found.append(f"jobs lost: {self.lost_jobs}")
        if self.stuck_jobs:
            found.append(f"jobs not terminal: {self.stuck_jobs}")
        if self.double_posts:
            found.append(f"steps POSTed twice: {self.double_posts}")
        if self.idempotency_violations:
            found.append(f"Idempotency-Keys with other than one job: {self.idempotency_violations}")
        if self.captures_duplicated:
            found.append(f"{self.captures_duplicated} captures stored more than once")
        if self.captures_missing:
            found.append(f"{self.captures_missing} answered completions not stored")
        if self.captures_missing_in_killed_buffer:
            found.append(
                f"{self.captures_missing_in_killed_buffer} answered completions lost in kill -9ed replicas"
            )
        if self.request_log_missing or self.request_log_duplicated:
            found.append(
                f"request log: {self.request_log_missing} answered completions without a row, "
                f"{self.request_log_duplicated} with more than one"
            )
        if self.spool_files_left:
            found.append(f"{self.spool_files_left} spool files never replayed")
        if self.webhooks_missing:
            found.append(f"jobs without a webhook: {self.webhooks_missing}")
        unexpected_5xx = {k: v for k, v in self.api_5xx.items() if k != "503 database_unavailable"}
        if unexpected_5xx:
            found.append(f"5xx answers other than 503 database_unavailable: {unexpected_5xx}")
        if self.crashed:
            found.append(f"processes exited on their own: {self.crashed}")
        if any(k["resumed_s"] is None for k in self.kills):
            found.append("a kill the system never resumed from")
        return found

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class Proc:
    """One service process; `kill9()` and `restart()` keep its log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log = logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=handle, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def exited_unasked(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Replica(Proc):
    def __init__(self, index: int, env: dict[str, str], logs: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "app", "serve", "--port", str(self.port)]
        super().__init__(f"replica-{index}", argv, env, logs)


class WebhookReceiver:
    """Records every delivery (job id, event type, webhook-id) and answers 200."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, str, str]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        job_id = str((body.get("data") or {}).get("id", ""))
        self.deliveries.append((job_id, str(body.get("type")), request.headers.get("webhook-id", "")))
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _trajectory(reward: float, scenario: str) -> dict[str, Any]:
    choice = {
        "finish_reason": "stop",
        "index": 0,
        "message": {"role": "assistant", "content": f"BUY YES {reward:.2f}"},
        "logprobs": {
            "content": [{"token": "token_id:42", "bytes": [66], "logprob": -0.3, "top_logprobs": []}],
            "refusal": None,
        },
    }
    return {
        "messages_and_choices": [{"role": "user", "content": f"Window {scenario}. Decide."}, choice],
        "additional_histories": [],
        "reward": reward,
        "metrics": {},
        "metadata": {"scenario_id": scenario},
        "logs": [],
    }


async def _seed(engine: AsyncEngine, groups: int, emulator: EmulatorState) -> str:
    """A ready dataset of `groups` groups, and a served model line with one checkpoint."""
    dataset_id = "ds-" + secrets.token_hex(12)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        session.add(
            Dataset(
                id=dataset_id,
                status="ready",
                source="pushed",
                params={},
                stats={},
                group_count=groups,
                trajectory_count=groups * 4,
                trainable_turns=groups * 4,
            )
        )
        await session.flush()
        for g in range(groups):
            scenario = f"2025-11-14T{g:02d}:00"
            rewards = [0.1 * (i + 1) + 0.05 * g for i in range(4)]
            session.add(
                DatasetGroup(
                    dataset_id=dataset_id,
                    position=g,
                    scenario_id=scenario,
                    rewards=rewards,
                    trajectories=[_trajectory(r, scenario) for r in rewards],
                    trainable_turns=4,
                )
            )
        model = await get_or_create_model(
            session, entity=emulator.config.default_entity, project=PROJECT, name=SERVED, base_model=BASE
        )
        await record_checkpoint(session, model, step=1, metrics={}, job_id=None, job_step=1)
        await session.commit()
    emulator.add_checkpoint(SERVED, step=1, project=PROJECT)
    return dataset_id


class Soak:
    def __init__(self, config: SoakConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.spool_dir = workdir / "gateway-spool"
        self.rng = random.Random(config.seed)
        self.report = SoakReport(config=dict(config.__dict__), logs=str(self.logs))
        self.replicas: list[Replica] = []
        self.workers: list[Proc] = []
        self.acknowledged: dict[str, str] = {}  # job id → suffix
        self.keys: set[str] = set()
        self.answered: dict[str, tuple[int, float]] = {}  # trajectory id → (replica, time answered)
        self.replica_kills: list[tuple[int, float]] = []
        self.pg_outages: list[tuple[float, float]] = []
        self.postgres_down = False
        self.stop_traffic = asyncio.Event()
        self.chaos_done = asyncio.Event()
        self._api_errors: dict[str, int] = {}
        self.began = time.monotonic()

    # -- the stack ---------------------------------------------------------------------------
    def _env(self, pg: ThrowawayPostgres, wandb_url: str, webhook_url: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("WORKER__", "TRAINING__", "WANDB_", "DB__", "INFERENCE__", "DATABASE_URL"))
        }
        env.update(
            {
                "DATABASE_URL": pg.url,
                "WANDB_BASE_URL": wandb_url,
                "WANDB_API_KEY": WANDB_KEY,
                "API_KEYS": API_KEY,
                "MIGRATE_ON_START": "false",
                "RUN_WORKER": "false",
                "LOG_LEVEL": "WARNING",
                "TRAINING__WEBHOOK_URLS": json.dumps([webhook_url]),
                "TRAINING__WEBHOOK_SECRET": WEBHOOK_SECRET,
                "TRAINING__WEBHOOK_BACKOFF_S": "0.5",
                "TRAINING__WEBHOOK_MAX_ATTEMPTS": "20",
                "WORKER__LEASE_S": str(self.config.lease_s),
                "WORKER__HEARTBEAT_S": "0.5",
                "WORKER__POLL_INTERVAL_S": "0.2",
                "WORKER__EVENT_POLL_INTERVAL_S": "0.2",
                "WORKER__REMOTE_TIMEOUT_S": "5",
                # a training POST W&B answered with a 5xx or dropped may have started training:
                # the job watches for its checkpoint this long, then fails submission_unknown
                "WORKER__SUBMIT_RESOLUTION_S": "20",
                "WORKER__MAX_CONCURRENT_JOBS": "6",
                "WORKER__METRICS_PORT": "0",
                "WORKER__METRICS_HOST": "127.0.0.1",
                "INFERENCE__FLUSH_INTERVAL_S": str(self.config.flush_interval_s),
                # replicas on one host share one spool directory and adopt each other's files
                "INFERENCE__SPOOL_DIR": str(self.spool_dir),
            }
        )
        return env

    async def _wait_http(self, url: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{url} did not answer within {timeout_s}s; see {self.logs}")

    # -- traffic -----------------------------------------------------------------------------
    def _replica(self) -> tuple[int, Replica]:
        index = self.rng.randrange(len(self.replicas))
        return index, self.replicas[index]

    def _count(self, bucket: dict[str, int], key: str) -> None:
        bucket[key] = bucket.get(key, 0) + 1

    async def _request(
        self, http: httpx.AsyncClient, method: str, path: str, *, retry_ambiguous: bool, **kwargs: Any
    ) -> httpx.Response | None:
        """Send to a random replica; retry while no replica answers (killed, restarting) or the
        database is away (503). A request that may have been processed (timeout, reset after
        sending) is retried only when `retry_ambiguous` (it is idempotent)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            _index, replica = self._replica()
            try:
                response = await http.request(method, replica.url + path, **kwargs)
            except httpx.ConnectError:
                await asyncio.sleep(0.1)
                continue
            except httpx.HTTPError as exc:
                self._count(self._api_errors, type(exc).__name__)
                if not retry_ambiguous:
                    return None
                await asyncio.sleep(0.2)
                continue
            if response.status_code >= 500:
                try:
                    code = str(response.json()["error"]["code"])
                except (ValueError, KeyError, TypeError):
                    code = "not-the-envelope"
                self._count(self.report.api_5xx, f"{response.status_code} {code}")
                await asyncio.sleep(0.3)
                continue
            return response
        return None

    async def _create_jobs(self, http: httpx.AsyncClient, dataset_id: str) -> None:
        cancels: list[asyncio.Task[None]] = []
        spacing = self.config.chaos_s * 0.6 / max(1, self.config.jobs)
        for i in range(self.config.jobs):
            suffix = f"soak-{i}"
            body = {
                "model": BASE,
                "training_file": dataset_id,
                "suffix": suffix,
                "hyperparameters": {"batch_size": 1},
            }
            headers: dict[str, str] = {}
            idempotent = i % self.config.idempotent_every == 0
            if idempotent:
                key = f"soak-key-{i}-{secrets.token_hex(4)}"
                headers["Idempotency-Key"] = key
                self.keys.add(key)
            ids = set()
            for _attempt in range(2 if idempotent else 1):  # a keyed create is sent twice
                response = await self._request(
                    http,
                    "POST",
                    "/v1/fine_tuning/jobs",
                    retry_ambiguous=idempotent,
                    json=body,
                    headers=headers,
                )
                if response is not None and response.status_code == 200:
                    ids.add(response.json()["id"])
            if len(ids) > 1:
                self.report.idempotency_violations[headers["Idempotency-Key"]] = len(ids)
            for job_id in ids:
                self.acknowledged[job_id] = suffix
                if i % self.config.cancel_every == self.config.cancel_every - 1:
                    cancels.append(asyncio.create_task(self._cancel_later(http, job_id)))
            await asyncio.sleep(spacing)
        await asyncio.gather(*cancels)

    async def _cancel_later(self, http: httpx.AsyncClient, job_id: str) -> None:
        await asyncio.sleep(self.rng.uniform(0.5, 6.0))
        await self._request(http, "POST", f"/v1/fine_tuning/jobs/{job_id}/cancel", retry_ambiguous=True)

    async def _chat(self, http: httpx.AsyncClient, lane: int) -> None:
        n = 0
        while not self.stop_traffic.is_set():
            n += 1
            trajectory_id = f"traj-{lane}-{n}"
            index, replica = self._replica()
            body: dict[str, Any] = {
                "model": SERVED,
                "messages": [{"role": "user", "content": "Market 42 moved. What now?"}],
                "metadata": {"trajectory_id": trajectory_id},
            }
            stream = n % 3 == 0  # streams too: their capture is spooled before [DONE] is sent
            try:
                if stream:
                    body["stream"] = True
                    async with http.stream(
                        "POST", replica.url + "/v1/chat/completions", json=body
                    ) as response:
                        text = b"".join([chunk async for chunk in response.aiter_bytes()])
                    if response.status_code == 200 and b"data: [DONE]" not in text:
                        self._count(self.report.chats_failed, "stream_without_done")
                        continue
                else:
                    response = await http.post(replica.url + "/v1/chat/completions", json=body)
            except httpx.HTTPError as exc:
                self._count(self.report.chats_failed, type(exc).__name__)
                await asyncio.sleep(0.05)
                continue
            if response.status_code == 200:
                self.answered[trajectory_id] = (index, time.monotonic())
            else:
                self._count(self.report.chats_failed, str(response.status_code))
            if self.postgres_down:
                self._count(self.report.chats_during_outage, str(response.status_code))
            await asyncio.sleep(0.02)

    # -- chaos -------------------------------------------------------------------------------
    async def _held_by(self, engine: AsyncEngine, pid: int) -> int:
        """Unfinished jobs leased by the worker with this pid (-1: the database is away)."""
        with contextlib.suppress(Exception):
            async with engine.connect() as conn:
                held = await conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(FineTuningJob)
                    .where(
                        FineTuningJob.worker_id.like(f"%:{pid}:%"),
                        FineTuningJob.status.not_in(list(TERMINAL)),
                    )
                )
                return int(held or 0)
        return -1

    async def _resume_after_worker_kill(
        self, engine: AsyncEngine, pid: int, killed_at: float
    ) -> float | None:
        """Seconds until no unfinished job is leased by the dead worker any more (taken over by
        another worker or finished); 0 if it held none."""
        prefix = f"%:{pid}:%"
        deadline = killed_at + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                async with engine.connect() as conn:
                    held = await conn.scalar(
                        sa.select(sa.func.count())
                        .select_from(FineTuningJob)
                        .where(
                            FineTuningJob.worker_id.like(prefix),
                            FineTuningJob.status.not_in(list(TERMINAL)),
                        )
                    )
                if held == 0:
                    return time.monotonic() - killed_at
            await asyncio.sleep(0.1)
        return None

    async def _restart_postgres(self, pg: ThrowawayPostgres) -> None:
        began = time.monotonic()
        await asyncio.to_thread(pg.stop)
        self.postgres_down = True
        await asyncio.sleep(self.config.postgres_down_s)
        self.postgres_down = False
        await asyncio.to_thread(pg.start)
        self.pg_outages.append((began, time.monotonic()))
        self.report.postgres_restarts += 1

    def _lost_in_killed_buffer(self, replica: int, answered_at: float) -> bool:
        """Was this capture still in the memory of a replica that was then kill -9ed? Rows wait
        there until the next flush commits: a flush interval (plus the insert), or, after the
        database was away, until the writer's retry (backoff up to 5 s) once it is back."""
        window = self.config.flush_interval_s + KILL_BUFFER_WINDOW_S
        for index, killed in self.replica_kills:
            if index != replica or killed < answered_at:
                continue
            if killed - answered_at <= window:
                return True
            for down, up in self.pg_outages:
                if down - window <= answered_at and up <= killed <= up + WRITER_MAX_BACKOFF_S + window:
                    return True
        return False

    async def _chaos(self, engine: AsyncEngine, pg: ThrowawayPostgres, emulator: EmulatorState) -> None:
        cfg = self.config
        window = cfg.chaos_s
        kill_times = sorted(self.rng.uniform(window * 0.1, window) for _ in range(cfg.kills))
        restart_at = window * 0.5 if cfg.postgres_restart else None
        started = time.monotonic()
        if cfg.wandb_faults:
            # W&B misbehaving while jobs train: 5xx on a POST, a POST accepted whose answer
            # is lost, event polls failing, a status read that stalls past the timeout
            emulator.inject("training_jobs.create", "status", times=2, skip=2, status=503)
            emulator.inject("training_jobs.create", "accept_then_drop", times=2, skip=6)
            emulator.inject("events", "status", times=4, skip=10, status=500)
            emulator.inject("training_jobs.get", "hang", times=1, skip=3, seconds=8)
        replica_kills = 0
        for number, at in enumerate(kill_times):
            if restart_at is not None and time.monotonic() - started >= restart_at:
                await self._restart_postgres(pg)
                restart_at = None
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            kind = "worker" if self.rng.random() < 0.6 else "replica"
            if cfg.min_replica_kills - replica_kills >= len(kill_times) - number:
                kind = "replica"
            replica_kills += kind == "replica"
            killed_at = time.monotonic()
            resumed: float | None
            held = 0
            if kind == "worker":
                proc = self.rng.choice(self.workers)
                pid = proc.pid
                proc.kill9()
                proc.start()
                held = await self._held_by(engine, pid)
                resumed = await self._resume_after_worker_kill(engine, pid, killed_at)
            else:
                index = self.rng.randrange(len(self.replicas))
                replica = self.replicas[index]
                self.replica_kills.append((index, killed_at))
                replica.kill9()
                replica.start()
                try:
                    await self._wait_http(f"{replica.url}/healthz", timeout_s=120)
                    resumed = time.monotonic() - killed_at
                except RuntimeError:
                    resumed = None
            self.report.kills.append(
                {"kind": kind, "at_s": round(killed_at - started, 1), "jobs_held": held, "resumed_s": resumed}
            )
        if restart_at is not None:
            await self._restart_postgres(pg)
        self.chaos_done.set()

    # -- the run -----------------------------------------------------------------------------
    async def run(self) -> SoakReport:
        cfg = self.config
        began = time.monotonic()
        pg = ThrowawayPostgres()
        emulator_server = EmulatorServer(
            EmulatorState(EmulatorConfig(api_key=WANDB_KEY, pace_s=cfg.pace_s, gradient_steps=2))
        )
        receiver = WebhookReceiver()
        engine: AsyncEngine | None = None
        try:
            pg.start()
            await asyncio.to_thread(migrations.upgrade, pg.url)
            emulator_server.start()
            emulator = emulator_server.state
            await receiver.start()
            engine = create_async_engine(pg.url, pool_pre_ping=True)
            dataset_id = await _seed(engine, cfg.steps, emulator)
            env = self._env(pg, emulator_server.base_url, receiver.url)
            self.replicas = [Replica(i, env, self.logs) for i in range(cfg.replicas)]
            self.workers = [
                Proc(f"worker-{i}", [sys.executable, "-m", "app", "worker"], env, self.logs)
                for i in range(cfg.workers)
            ]
            for replica in self.replicas:
                await self._wait_http(f"{replica.url}/healthz")
            async with httpx.AsyncClient(
                headers={"Authorization": f"Bearer {API_KEY}"}, timeout=httpx.Timeout(20.0, connect=2.0)
            ) as http:
                chats = [asyncio.create_task(self._chat(http, lane)) for lane in range(cfg.chat_concurrency)]
                chaos = asyncio.create_task(self._chaos(engine, pg, emulator))
                watcher = asyncio.create_task(self._watch_processes())
                await self._create_jobs(http, dataset_id)
                await chaos
                await self._wait_terminal(engine, began)
                self.stop_traffic.set()
                await asyncio.gather(*chats, watcher)
                await self._wait_webhooks(engine)
            for proc in [*self.replicas, *self.workers]:  # graceful: writers flush what they hold
                await asyncio.to_thread(proc.stop)
            await self._verify(engine, emulator, receiver)
        finally:
            for proc in [*self.replicas, *self.workers]:
                with contextlib.suppress(Exception):
                    if proc.proc is not None and proc.proc.poll() is None:
                        proc.proc.kill()
                        proc.proc.wait(timeout=10)
            if engine is not None:
                await engine.dispose()
            await receiver.stop()
            with contextlib.suppress(Exception):
                emulator_server.stop()
            pg.destroy()
        self.report.duration_s = round(time.monotonic() - began, 1)
        return self.report

    async def _watch_processes(self) -> None:
        """A process that exits without being killed is a finding: counted, then restarted so
        the run goes on. (kill9() restarts its process at once, so it never shows here.)"""
        while not self.stop_traffic.is_set():
            for proc in [*self.replicas, *self.workers]:
                if proc.exited_unasked():
                    self._count(self.report.crashed, proc.name)
                    proc.start()
            await asyncio.sleep(0.5)

    async def _wait_terminal(self, engine: AsyncEngine, began: float) -> None:
        while time.monotonic() - began < self.config.timeout_s:
            with contextlib.suppress(Exception):
                async with engine.connect() as conn:
                    active = await conn.scalar(
                        sa.select(sa.func.count())
                        .select_from(FineTuningJob)
                        .where(FineTuningJob.status.not_in(list(TERMINAL)))
                    )
                if active == 0:
                    return
            await asyncio.sleep(0.5)

    async def _wait_webhooks(self, engine: AsyncEngine, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            async with engine.connect() as conn:
                pending = await conn.scalar(
                    sa.text("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
                )
            if pending == 0:
                return
            await asyncio.sleep(0.5)

    async def _verify(self, engine: AsyncEngine, emulator: EmulatorState, receiver: WebhookReceiver) -> None:
        report = self.report
        async with async_sessionmaker(engine)() as session:
            jobs = (await session.scalars(sa.select(FineTuningJob))).all()
            # steps the service started to send to W&B (each at most once, by its state machine)
            attempted = dict(
                (
                    await session.execute(
                        sa.select(JobStep.job_id, sa.func.count())
                        .where(JobStep.submit_started_at.is_not(None))
                        .group_by(JobStep.job_id)
                    )
                ).all()
            )
            captured = (await session.scalars(sa.select(CapturedCompletion.trajectory_id))).all()
            logged = (
                await session.scalars(
                    sa.select(GatewayRequest.trajectory_id).where(
                        GatewayRequest.status_code == 200, GatewayRequest.trajectory_id.is_not(None)
                    )
                )
            ).all()
        by_id = {job.id: job for job in jobs}
        for job in jobs:
            report.jobs[job.status] = report.jobs.get(job.status, 0) + 1
            if job.status not in TERMINAL:
                report.stuck_jobs.append(f"{job.id}:{job.status}")
        report.acknowledged_jobs = len(self.acknowledged)
        report.lost_jobs = sorted(set(self.acknowledged) - set(by_id))
        # W&B's own count of accepted training POSTs per model line (= the job's suffix) against
        # the steps the service started to send: more POSTs than steps means a step was sent
        # twice. (A POST W&B accepted but whose answer was lost counts once: it is never re-sent.)
        posts = emulator.counters()["training_jobs_by_model_name"]
        for job in jobs:
            accepted = int(posts.get(job.suffix or "", 0))
            extra = accepted - min(int(attempted.get(job.id, 0)), job.total_steps)
            if extra > 0:
                report.double_posts[job.id] = extra
        report.idempotency_keys = len(self.keys)
        keyed = [job.idempotency_key for job in jobs if job.idempotency_key]
        for key in self.keys:
            if keyed.count(key) != 1:
                report.idempotency_violations[key] = keyed.count(key)
        # captures: every completion answered to a client stored exactly once
        report.chats_answered = len(self.answered)
        report.captures_stored = len(captured)
        report.captures_duplicated = len(captured) - len(set(captured))
        stored = set(captured)
        # A capture waits in its replica's memory until the next flush commits, but it was
        # spooled before it was answered: a kill -9 in that window must lose nothing either.
        # (Those lost anyway are told apart, for diagnosis: answered shortly before a kill.)
        log_counts = collections.Counter(logged)
        for trajectory_id in self.answered:
            if log_counts[trajectory_id] == 0:
                report.request_log_missing += 1
            elif log_counts[trajectory_id] > 1:
                report.request_log_duplicated += 1
        report.spool_files_left = len(list(self.spool_dir.glob("*.jsonl"))) if self.spool_dir.exists() else 0
        for trajectory_id, (replica, answered_at) in self.answered.items():
            if trajectory_id in stored:
                continue
            if self._lost_in_killed_buffer(replica, answered_at):
                report.captures_missing_in_killed_buffer += 1
            else:
                report.captures_missing += 1
                if len(report.captures_missing_detail) < 10:
                    since = [
                        round(answered_at - killed, 2) for r, killed in self.replica_kills if r == replica
                    ]
                    report.captures_missing_detail.append(
                        f"{trajectory_id} replica {replica} answered at {answered_at - self.began:.2f}s; "
                        f"relative to that replica's kills: {since}; Postgres outages: "
                        f"{[(round(d - self.began, 1), round(u - self.began, 1)) for d, u in self.pg_outages]}"
                    )
        delivered = {job_id for job_id, _type, _id in receiver.deliveries}
        report.webhook_deliveries = len(receiver.deliveries)
        report.webhooks_missing = sorted(j.id for j in jobs if j.status in TERMINAL and j.id not in delivered)
        # time to resume: a worker's kill, until every job it held runs on another worker (its
        # lease expires first); a replica's, until it answers again. A worker that held no job
        # has nothing to resume and is left out of the figure.
        resumes = [
            k["resumed_s"]
            for k in report.kills
            if k["resumed_s"] is not None and (k["kind"] == "replica" or k["jobs_held"] != 0)
        ]
        for kill in report.kills:
            if kill["resumed_s"] is not None:
                kill["resumed_s"] = round(kill["resumed_s"], 2)
        if resumes:
            report.resume_p50_s = round(_percentile(resumes, 50), 2)
            report.resume_max_s = round(max(resumes), 2)
        for kind in ("worker", "replica"):
            times = [
                k["resumed_s"]
                for k in report.kills
                if k["kind"] == kind
                and k["resumed_s"] is not None
                and (kind == "replica" or k["jobs_held"] != 0)
            ]
            if times:
                report.resume_by_kind[kind] = {
                    "n": len(times),
                    "p50_s": round(_percentile(times, 50), 2),
                    "max_s": round(max(times), 2),
                }
        report.wandb_faults_fired = dict(emulator.counters()["faults_fired"])
        report.chats_failed = dict(sorted(report.chats_failed.items()))
        report.api_5xx = dict(sorted(report.api_5xx.items()))


async def run_soak(config: SoakConfig, workdir: Path) -> SoakReport:
    return await Soak(config, workdir).run()


def dump(report: SoakReport) -> str:
    return json.dumps(report.as_dict(), indent=2, default=str)
