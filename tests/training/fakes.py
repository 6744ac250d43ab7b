"""An in-memory W&B Training (`FakeTraining`, a `TrainingAPI`) and a virtual clock.

The fake behaves like W&B as ART 0.5.18 sees it (art-serverless.md §4): a POST creates a
training job; its events are `training_started`, `gradient_step`s and `training_ended` (or
`training_failed`); the model's checkpoint is registered before `training_ended` is visible;
checkpoint steps only grow. How each submitted job behaves is scripted:

    fake.script("stall")                 # the next job: training_started, then nothing
    fake.script("fail", error="OOM")     # training_failed after the gradient steps
    fake.script("slow")                  # one event per events() call
    fake.script("hold")                  # training_started, then nothing until fake.finish(job_id)
    fake.script("no_checkpoint")         # training_ended, but the checkpoint is never listed
    fake.fail("submit", RemoteUnavailable("HTTP 500", status=500), accepted=True)  # job created, answer lost
    fake.on("events", hook)              # run hook() before the next events() call

`calls` records every call by name, so tests can assert "one POST per step".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.db import utcnow
from app.jobs.hyperparameters import Hyperparameters
from app.training.control import Clock
from app.training.remote import GroupPayload, RemoteCheckpoint, RemoteError, RemoteEvent, RemoteModel

Hook = Callable[[], Any]


class FakeClock(Clock):
    """Virtual time: a wait returns at once (unless its event is set, virtual time moves on)."""

    def __init__(self) -> None:
        self._start = utcnow()
        self._elapsed = 0.0

    def now(self) -> dt.datetime:
        return self._start + dt.timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._elapsed

    def advance(self, seconds: float) -> None:
        self._elapsed += seconds

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        if not event.is_set():
            self._elapsed += max(0.0, seconds)
        await asyncio.sleep(0)


@dataclass
class FakeModel:
    id: str
    name: str
    entity: str
    project: str
    base_model: str
    checkpoints: list[RemoteCheckpoint] = field(default_factory=list)
    last_step: int = 0

    def add_checkpoint(self, metrics: dict[str, float] | None = None) -> RemoteCheckpoint:
        self.last_step += 1
        ckpt = RemoteCheckpoint(id=str(uuid.uuid4()), step=self.last_step, metrics=metrics or {"reward": 0.5})
        self.checkpoints.append(ckpt)
        return ckpt


@dataclass
class FakeJob:
    id: str
    model: FakeModel
    groups: list[GroupPayload]
    hp: Hyperparameters
    kind: str
    events: list[RemoteEvent]
    visible: int
    error: str = ""
    checkpoint: RemoteCheckpoint | None = None


@dataclass
class Fault:
    error: RemoteError
    accepted: bool
    times: int | None


class FakeTraining:
    def __init__(self, *, gradient_steps: int = 2, entity: str = "fake-entity") -> None:
        self.gradient_steps = gradient_steps
        self.entity = entity
        self.models: dict[str, FakeModel] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.calls: list[str] = []
        self._scripts: list[tuple[str, dict[str, Any]]] = []
        self._faults: dict[str, list[Fault]] = {}
        self._hooks: dict[str, list[Hook]] = {}
        self.closed = False

    # -- test controls ------------------------------------------------------------------------

    def script(self, kind: str, **options: Any) -> None:
        """How the next submitted job behaves: succeed (default), slow, hold, stall, fail, no_checkpoint."""
        self._scripts.append((kind, options))

    def fail(self, call: str, error: RemoteError, *, accepted: bool = False, times: int | None = 1) -> None:
        """The next `times` calls of `call` raise `error` (a POST with `accepted` still creates its job)."""
        self._faults.setdefault(call, []).append(Fault(error, accepted, times))

    def on(self, call: str, hook: Hook) -> None:
        """Run `hook` (sync or async) once, right before the next `call`."""
        self._hooks.setdefault(call, []).append(hook)

    def posts(self) -> int:
        return self.calls.count("submit")

    def model(self, name: str) -> FakeModel:
        return next(m for m in self.models.values() if m.name == name)

    def finish(self, job_id: str) -> RemoteCheckpoint | None:
        """A held (or stalled) job finishes now: its checkpoint is registered, its events shown."""
        job = self.jobs[job_id]
        if job.checkpoint is None:
            job.checkpoint = job.model.add_checkpoint({"reward": 0.5})
        job.events = _events(self.gradient_steps, "succeed")
        job.visible = len(job.events)
        return job.checkpoint

    def last_job(self) -> FakeJob:
        return list(self.jobs.values())[-1]

    # -- TrainingAPI --------------------------------------------------------------------------

    async def _enter(self, call: str) -> Fault | None:
        self.calls.append(call)
        hooks = self._hooks.get(call)
        if hooks:
            result = hooks.pop(0)()
            if inspect.isawaitable(result):
                await result
        await asyncio.sleep(0)
        faults = self._faults.get(call)
        if faults:
            fault = faults[0]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    faults.pop(0)
            return fault
        return None

    async def _plain(self, call: str) -> None:
        fault = await self._enter(call)
        if fault is not None:
            raise fault.error

    async def register(self, *, name: str, project: str, entity: str | None, base_model: str) -> RemoteModel:
        await self._plain("register")
        model = next((m for m in self.models.values() if (m.name, m.project) == (name, project)), None)
        if model is None:
            model = FakeModel(str(uuid.uuid4()), name, entity or self.entity, project, base_model)
            self.models[model.id] = model
        return RemoteModel(model.id, model.entity, model.project, model.name, model.base_model)

    async def latest_step(self, model_id: str) -> int:
        await self._plain("latest_step")
        return max((c.step for c in self.models[model_id].checkpoints), default=0)

    async def checkpoints_above(self, model_id: str, step: int) -> list[RemoteCheckpoint]:
        await self._plain("checkpoints_above")
        found = [c for c in self.models[model_id].checkpoints if c.step > step]
        return sorted(found, key=lambda c: c.step, reverse=True)

    async def submit(self, model_id: str, groups: Sequence[GroupPayload], hp: Hyperparameters) -> str:
        fault = await self._enter("submit")
        if fault is not None and not fault.accepted:
            raise fault.error
        kind, options = self._scripts.pop(0) if self._scripts else ("succeed", {})
        model = self.models[model_id]
        job = FakeJob(
            id=str(uuid.uuid4()),
            model=model,
            groups=list(groups),
            hp=hp,
            kind=kind,
            events=_events(self.gradient_steps, kind, options.get("error", "Emulated failure")),
            visible=0,
            error=options.get("error", ""),
        )
        self.jobs[job.id] = job
        if kind == "succeed":  # W&B at pace 0: done by the time anyone looks
            job.checkpoint = model.add_checkpoint({"reward": 0.5})
        if fault is not None:
            raise fault.error
        return job.id

    async def events(self, remote_job_id: str, after: str | None) -> tuple[list[RemoteEvent], bool]:
        await self._plain("events")
        job = self.jobs.get(remote_job_id)
        if job is None:
            from app.training.remote import RemoteRejected

            raise RemoteRejected("HTTP 404: Not found", status=404, detail="Not found")
        if job.kind == "slow":
            job.visible = min(len(job.events), job.visible + 1)
        elif job.kind in ("hold", "stall"):
            job.visible = max(job.visible, 1)
        else:
            job.visible = len(job.events)
        shown = job.events[: job.visible]
        if job.visible == len(job.events) and job.kind in ("slow",) and job.checkpoint is None:
            job.checkpoint = job.model.add_checkpoint({"reward": 0.5})
        start = 0
        if after is not None:
            ids = [e.id for e in shown]
            start = ids.index(after) + 1 if after in ids else len(shown)
        return shown[start:], False

    async def delete_checkpoints(self, model_id: str, steps: Sequence[int]) -> tuple[int, list[int]]:
        await self._plain("delete_checkpoints")
        model = self.models[model_id]
        present = {c.step for c in model.checkpoints}
        model.checkpoints = [c for c in model.checkpoints if c.step not in set(steps)]
        return len(present & set(steps)), sorted(set(steps) - present)

    async def close(self) -> None:
        self.closed = True


def _events(gradient_steps: int, kind: str, error: str = "") -> list[RemoteEvent]:
    def event(type_: str, data: dict[str, Any]) -> RemoteEvent:
        return RemoteEvent(id=str(uuid.uuid4()), type=type_, data=data)

    events = [event("training_started", {"num_sequences": gradient_steps})]
    if kind in ("stall", "hold"):
        return events
    steps = [
        event("gradient_step", {"loss": 0.5 - 0.1 * i, "grad_norm": 1.0, "num_trainable_tokens": 10.0})
        for i in range(gradient_steps)
    ]
    if kind == "fail":
        return [*events, *steps[:1], event("training_failed", {"error_message": error})]
    return [*events, *steps, event("training_ended", {})]


async def run_hook(hook: Callable[[], Awaitable[None]] | Callable[[], None]) -> None:
    result = hook()
    if inspect.isawaitable(result):
        await result
