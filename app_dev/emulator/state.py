"""All emulator state behind one lock: models, checkpoints, training jobs, faults, counters.

The HTTP routes (running on the server's event loop thread) and test code (any thread) share one
`EmulatorState`; every public method takes the lock, so both sides can use it at once.
Jobs advance lazily: each access first registers the checkpoints of jobs whose end is due.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from app_dev.emulator.config import EmulatorConfig
from app_dev.emulator.faults import JOB_KINDS, Fault, build_fault
from app_dev.emulator.jobs import Event, Job, build_job
from app_dev.emulator.schemas import TrainingJobCreate


class EmulatorError(Exception):
    """A W&B-style error: the route answers `status` with `{"detail": detail}`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Model:
    id: str
    entity: str
    project: str
    name: str
    base_model: str
    run_id: str
    created_at: int
    last_step: int = 0  # highest step ever registered: steps are never reused, even after deletion

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "entity": self.entity,
            "project": self.project,
            "name": self.name,
            "base_model": self.base_model,
            "run_id": self.run_id,
        }

    @property
    def inference_name(self) -> str:
        return f"wandb-artifact:///{self.entity}/{self.project}/{self.name}"


@dataclass
class Checkpoint:
    id: str
    model_id: str
    step: int
    metrics: dict[str, float]
    created_at: int
    job_id: str | None

    def public(self) -> dict[str, Any]:
        return {
            "object": "checkpoint",
            "id": self.id,
            "step": self.step,
            "metrics": dict(self.metrics),
            "created_at": self.created_at,
        }


def _page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
    }


class EmulatorState:
    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self._lock = threading.RLock()
        self._initial_config = config or EmulatorConfig()
        self._config = self._initial_config
        self._models: dict[str, Model] = {}
        self._checkpoints: dict[str, list[Checkpoint]] = {}  # model id → sorted by step
        self._jobs: dict[str, Job] = {}
        self._faults: list[Fault] = []
        self._requests: Counter[str] = Counter()
        self._faults_fired: Counter[str] = Counter()
        self._jobs_by_model_id: Counter[str] = Counter()
        self._jobs_by_model_name: Counter[str] = Counter()
        self._generation = 0
        self._time_offset = 0.0

    # ----------------------------------------------------------------- configuration
    @property
    def config(self) -> EmulatorConfig:
        with self._lock:
            return self._config

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Change settings (e.g. `pace_s=0.2`); jobs already created keep the pace they started with."""
        with self._lock:
            self._config = self._config.with_changes(**changes)
            return self._config

    @property
    def generation(self) -> int:
        """Bumped by `reset()`, so requests hanging from an earlier test give up."""
        with self._lock:
            return self._generation

    def reset(self) -> None:
        """Forget everything (models, checkpoints, jobs, faults, counters) and restore the initial settings."""
        with self._lock:
            self._config = self._initial_config
            self._models.clear()
            self._checkpoints.clear()
            self._jobs.clear()
            self._faults.clear()
            self._requests.clear()
            self._faults_fired.clear()
            self._jobs_by_model_id.clear()
            self._jobs_by_model_name.clear()
            self._generation += 1
            self._time_offset = 0.0

    def advance_time(self, seconds: float) -> None:
        """Move the jobs' clock forward, so tests see paced events without sleeping."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        with self._lock:
            self._time_offset += seconds

    def _now(self) -> float:
        return time.monotonic() + self._time_offset

    def check_key(self, key: str) -> bool:
        with self._lock:
            expected = self._config.api_key
        return bool(key) and (expected is None or key == expected)

    # ----------------------------------------------------------------- faults and counters
    def inject(self, route: str, kind: str, *, times: int | None = 1, skip: int = 0, **opts: Any) -> Fault:
        fault = build_fault(route, kind, times=times, skip=skip, **opts)
        with self._lock:
            self._faults.append(fault)
        return fault

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.public() for f in self._faults]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def take_fault(
        self, route: str, *, job_level: bool = False, model_name: str | None = None
    ) -> Fault | None:
        """The first live fault for this request, consumed; None to answer normally.

        Transport faults are taken by the middleware, job faults by the training-job route.
        """
        with self._lock:
            for fault in self._faults:
                if fault.route != route or (fault.kind in JOB_KINDS) != job_level or fault.exhausted:
                    continue
                if job_level and fault.model is not None and fault.model != model_name:
                    continue
                fault.seen += 1
                if fault.seen <= fault.skip:
                    continue
                fault.fired += 1
                fault.generation = self._generation
                self._faults_fired[route] += 1
                return fault
            return None

    def count_request(self, route: str) -> None:
        with self._lock:
            self._requests[route] += 1

    def counters(self) -> dict[str, Any]:
        """Snapshot: requests per route key (every attempt, faults included), faults fired per
        route, and accepted training-job POSTs per model id and per model name."""
        with self._lock:
            return {
                "requests": dict(self._requests),
                "faults_fired": dict(self._faults_fired),
                "training_jobs_by_model_id": dict(self._jobs_by_model_id),
                "training_jobs_by_model_name": dict(self._jobs_by_model_name),
                "training_jobs_total": sum(self._jobs_by_model_id.values()),
            }

    # ----------------------------------------------------------------- models
    def create_model(
        self,
        *,
        entity: str | None,
        project: str,
        name: str,
        base_model: str,
        return_existing: bool = True,
    ) -> dict[str, Any]:
        with self._lock:
            if base_model not in self._config.base_models:
                raise EmulatorError(
                    400,
                    f"Base model '{base_model}' is not supported. Supported base models: "
                    + ", ".join(self._config.base_models),
                )
            entity = entity or self._config.default_entity
            existing = self._find_model(entity, project, name)
            if existing is not None:
                if not return_existing:
                    raise EmulatorError(409, f"Model '{entity}/{project}/{name}' already exists")
                return existing.public()
            model = Model(
                id=str(uuid.uuid4()),
                entity=entity,
                project=project,
                name=name,
                base_model=base_model,
                run_id=uuid.uuid4().hex[:8],
                created_at=int(time.time()),
            )
            self._models[model.id] = model
            self._checkpoints[model.id] = []
            return model.public()

    def delete_model(self, model_id: str) -> dict[str, Any]:
        with self._lock:
            self._advance()
            model = self._model(model_id)
            deleted = len(self._checkpoints.pop(model.id, []))
            del self._models[model.id]
            return {"model_id": model.id, "deleted_checkpoints": deleted, "deleted_run": True}

    def models(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m.public() for m in self._models.values()]

    def _model(self, model_id: str) -> Model:
        model = self._models.get(model_id)
        if model is None:
            raise EmulatorError(404, f"Model '{model_id}' not found")
        return model

    def _find_model(self, entity: str | None, project: str | None, name: str) -> Model | None:
        for model in self._models.values():
            if (
                model.name == name
                and (entity is None or model.entity == entity)
                and (project is None or model.project == project)
            ):
                return model
        return None

    # ----------------------------------------------------------------- checkpoints
    def list_checkpoints(
        self, model_id: str, *, limit: int = 20, order: str = "asc", after: str | None = None
    ) -> dict[str, Any]:
        with self._lock:
            self._advance()
            model = self._model(model_id)
            items = list(self._checkpoints[model.id])
            if order == "desc":
                items.reverse()
            if after is not None:
                position = next((i for i, c in enumerate(items) if c.id == after), None)
                if position is None:
                    raise EmulatorError(400, f"Invalid cursor: checkpoint '{after}' not found")
                items = items[position + 1 :]
            page = [c.public() for c in items[:limit]]
            return _page(page, has_more=len(items) > limit)

    def delete_checkpoints(self, model_id: str, steps: list[int]) -> dict[str, Any]:
        with self._lock:
            self._advance()
            model = self._model(model_id)
            wanted = set(steps)
            existing = self._checkpoints[model.id]
            kept = [c for c in existing if c.step not in wanted]
            found = {c.step for c in existing} & wanted
            self._checkpoints[model.id] = kept
            return {
                "deleted_count": len(existing) - len(kept),
                "not_found_steps": sorted(wanted - found),
            }

    def add_checkpoint(
        self,
        model_name: str,
        *,
        project: str | None = None,
        entity: str | None = None,
        base_model: str | None = None,
        step: int | None = None,
        metrics: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """Seed a checkpoint without training (creates the model if needed, in `project`
        or "babylon-rl"); returns the checkpoint plus its `model_id` and served `inference_name`."""
        with self._lock:
            self._advance()
            model = self._find_model(entity, project, model_name)
            if model is None:
                self.create_model(
                    entity=entity,
                    project=project or "babylon-rl",
                    name=model_name,
                    base_model=base_model or self._config.base_models[0],
                )
                model = self._find_model(entity, project, model_name)
                assert model is not None
            checkpoint = self._register_checkpoint(model, metrics or {}, job_id=None, step=step)
            return {
                **checkpoint.public(),
                "model_id": model.id,
                "inference_name": f"{model.inference_name}:step{checkpoint.step}",
            }

    def checkpoints(self, model_name: str, *, project: str | None = None) -> list[dict[str, Any]]:
        """The model's checkpoints by step (empty when the model does not exist)."""
        with self._lock:
            self._advance()
            model = self._find_model(None, project, model_name)
            if model is None:
                return []
            return [c.public() for c in self._checkpoints[model.id]]

    def find_served_checkpoint(self, entity: str, project: str, name: str, step: int | None) -> bool:
        """Whether `wandb-artifact:///entity/project/name[:stepN]` names a live checkpoint."""
        with self._lock:
            self._advance()
            model = self._find_model(entity, project, name)
            if model is None:
                return False
            checkpoints = self._checkpoints[model.id]
            if step is None:
                return bool(checkpoints)
            return any(c.step == step for c in checkpoints)

    def _register_checkpoint(
        self, model: Model, metrics: dict[str, float], *, job_id: str | None, step: int | None = None
    ) -> Checkpoint:
        checkpoints = self._checkpoints[model.id]
        if step is None:
            step = model.last_step + 1
        elif any(c.step == step for c in checkpoints):
            raise EmulatorError(409, f"Checkpoint step {step} already exists")
        checkpoint = Checkpoint(
            id=str(uuid.uuid4()),
            model_id=model.id,
            step=step,
            metrics=dict(metrics),
            created_at=int(time.time()),
            job_id=job_id,
        )
        checkpoints.append(checkpoint)
        checkpoints.sort(key=lambda c: c.step)
        model.last_step = max(model.last_step, step)
        return checkpoint

    # ----------------------------------------------------------------- training jobs
    def create_training_job(self, payload: TrainingJobCreate) -> dict[str, Any]:
        with self._lock:
            self._advance()
            model = self._model(payload.model_id)
            fault = self.take_fault("training_jobs.create", job_level=True, model_name=model.name)
            job = build_job(
                payload,
                model_name=model.name,
                gradient_steps=self._config.gradient_steps,
                pace_s=self._config.pace_s,
                now_mono=self._now(),
                now_unix=int(time.time()),
                fault_kind=fault.kind if fault else None,
                error_message=fault.error_message if fault else "",
                after_steps=fault.after_steps if fault else 0,
            )
            self._jobs[job.id] = job
            self._jobs_by_model_id[model.id] += 1
            self._jobs_by_model_name[model.name] += 1
            self._advance()
            return {"id": job.id}

    def get_training_job(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return {"id": self._job(job_id).id}

    def list_events(self, job_id: str, *, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        with self._lock:
            self._advance()
            job = self._job(job_id)
            visible: list[Event] = job.events[: job.visible_count(self._now())]
            if after is not None:
                position = next((i for i, e in enumerate(job.events) if e.id == after), None)
                if position is None:
                    raise EmulatorError(400, f"Invalid cursor: event '{after}' not found")
                visible = visible[position + 1 :]
            page = [e.public() for e in visible[:limit]]
            return _page(page, has_more=len(visible) > limit)

    def jobs(self, model_name: str | None = None) -> list[dict[str, Any]]:
        """Every job (oldest first) with its status, outcome, checkpoint step and what was submitted."""
        with self._lock:
            self._advance()
            now = self._now()
            return [
                j.public(now)
                for j in sorted(self._jobs.values(), key=lambda j: j.created_mono)
                if model_name is None or j.model_name == model_name
            ]

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise EmulatorError(404, f"Training job '{job_id}' not found")
        return job

    def _advance(self) -> None:
        """Register the checkpoint of every successful job whose last event is due, oldest first,
        so the checkpoint exists before any client can read `training_ended`."""
        now = self._now()
        due = [
            j
            for j in self._jobs.values()
            if not j.finished and j.outcome != "stalled" and j.is_terminal_visible(now)
        ]
        for job in sorted(due, key=lambda j: j.created_mono + j.pace_s * (len(j.events) - 1)):
            job.finished = True
            model = self._models.get(job.model_id)
            if job.outcome == "succeeded" and model is not None:
                job.checkpoint_step = self._register_checkpoint(model, job.final_metrics, job_id=job.id).step
