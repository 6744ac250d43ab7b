"""The one interface between a job's step protocol and W&B Training: `TrainingAPI`.

`WandbTraining` (app/training/wandb_api.py) implements it with openpipe-art's client; the
tests drive the same step protocol through an in-memory fake (tests/training/fake_wandb.py).
Errors say what a failed call means for a non-idempotent POST:

* `RemoteUnavailable`: timeout, dropped connection or 5xx: a POST may or may not have been
  accepted (W&B's POST /preview/training-jobs has no idempotency key, art-serverless.md §7.4);
* `RemoteRateLimited`: 429, nothing was created; retrying later is safe;
* `RemoteRejected`: any other 4xx, nothing was created and retrying will not help.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.jobs.hyperparameters import Hyperparameters


class RemoteError(Exception):
    """A W&B call failed; `status` is W&B's HTTP status when it answered, `detail` its message."""

    def __init__(self, message: str, *, status: int | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail if detail is not None else message

    def describe(self) -> str:
        """`HTTP 500 (Internal server error)` or the transport error, for events and errors."""
        if self.status is not None:
            return f"HTTP {self.status} ({self.detail})"
        return str(self)


class RemoteUnavailable(RemoteError):
    """Timeout, dropped connection or 5xx: a POST may or may not have been accepted."""


class RemoteRateLimited(RemoteError):
    """429: the request was refused, nothing was created."""


class RemoteRejected(RemoteError):
    """Another 4xx: the request was refused, nothing was created; retrying will not help."""


@dataclass(frozen=True)
class RemoteModel:
    id: str
    entity: str
    project: str
    name: str
    base_model: str


@dataclass(frozen=True)
class RemoteCheckpoint:
    id: str
    step: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteEvent:
    id: str
    type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class GroupPayload:
    """One stored dataset group as a step sends it: ART `Trajectory` dumps and the scenario."""

    scenario_id: str
    trajectories: list[dict[str, Any]]


class TrainingAPI(Protocol):
    """The W&B Training calls one job's step protocol makes (art-serverless.md §4.2)."""

    async def register(self, *, name: str, project: str, entity: str | None, base_model: str) -> RemoteModel:
        """`POST /preview/models` with return_existing=true: idempotent."""
        ...

    async def latest_step(self, model_id: str) -> int:
        """The newest checkpoint step of the model (0 without any), as ART's `_get_step`."""
        ...

    async def checkpoints_above(self, model_id: str, step: int) -> list[RemoteCheckpoint]:
        """The model's checkpoints with a step above `step`, newest first."""
        ...

    async def submit(self, model_id: str, groups: Sequence[GroupPayload], hp: Hyperparameters) -> str:
        """One `POST /preview/training-jobs`; never retried. Returns W&B's training job id."""
        ...

    async def events(self, remote_job_id: str, after: str | None) -> tuple[list[RemoteEvent], bool]:
        """One page of the training job's events after `after`, and whether more follow."""
        ...

    async def delete_checkpoints(self, model_id: str, steps: Sequence[int]) -> tuple[int, list[int]]:
        """Delete checkpoints by step: (deleted count, steps W&B did not find)."""
        ...

    async def close(self) -> None: ...
