"""A training job's script: its events, their reveal times, and the metrics it reports.

Everything is computed once when the job is created, from the submitted trajectories, so a
job's progress is a pure function of the time elapsed since then (`pace_s` per event).
"""

from __future__ import annotations

import statistics
import uuid
from dataclasses import dataclass, field
from typing import Any

from app_dev.emulator.schemas import ChoiceEntry, TrainingJobCreate


@dataclass(frozen=True)
class BatchSummary:
    num_groups: int
    num_groups_trainable: int
    num_trajectories: int
    num_trainable_tokens: int
    reward_mean: float
    reward_std_dev: float


def summarize(payload: TrainingJobCreate) -> BatchSummary:
    """What the trainer would see: trainable groups (≥2 trajectories, rewards not all equal) and tokens."""
    rewards: list[float] = []
    trainable_groups = 0
    tokens = 0
    trajectories = 0
    for group in payload.trajectory_groups:
        group_rewards = [t.reward for t in group.trajectories]
        rewards.extend(group_rewards)
        trajectories += len(group_rewards)
        trainable = len(group_rewards) > 1 and len(set(group_rewards)) > 1
        if not trainable:
            continue
        trainable_groups += 1
        for trajectory in group.trajectories:
            histories = [trajectory.messages_and_choices] + [
                h.messages_and_choices for h in trajectory.additional_histories
            ]
            for entries in histories:
                for entry in entries:
                    if isinstance(entry, ChoiceEntry) and entry.logprobs:
                        tokens += len(entry.logprobs.get("content") or [])
    return BatchSummary(
        num_groups=len(payload.trajectory_groups),
        num_groups_trainable=trainable_groups,
        num_trajectories=trajectories,
        num_trainable_tokens=tokens,
        reward_mean=statistics.fmean(rewards) if rewards else 0.0,
        reward_std_dev=statistics.pstdev(rewards) if len(rewards) > 1 else 0.0,
    )


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    data: dict[str, Any]

    def public(self) -> dict[str, Any]:
        return {"object": "training_job.event", "id": self.id, "type": self.type, "data": self.data}


@dataclass
class Job:
    id: str
    model_id: str
    model_name: str
    created_mono: float
    created_at: int
    pace_s: float
    events: list[Event]
    outcome: str  # "succeeded" | "failed" | "stalled"
    summary: BatchSummary
    final_metrics: dict[str, float]
    experimental_config: dict[str, Any] | None
    trajectory_groups: list[dict[str, Any]]
    checkpoint_step: int | None = None
    finished: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def visible_count(self, now_mono: float) -> int:
        """Events revealed so far: event i shows once i × pace_s seconds have passed."""
        if self.pace_s <= 0:
            return len(self.events)
        elapsed = max(0.0, now_mono - self.created_mono)
        return min(len(self.events), int(elapsed / self.pace_s + 1e-9) + 1)

    def is_terminal_visible(self, now_mono: float) -> bool:
        return self.outcome != "stalled" and self.visible_count(now_mono) == len(self.events)

    def status(self, now_mono: float) -> str:
        if self.outcome == "stalled":
            return "stalled"
        return self.outcome if self.is_terminal_visible(now_mono) else "running"

    def public(self, now_mono: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "model_id": self.model_id,
            "model_name": self.model_name,
            "created_at": self.created_at,
            "status": self.status(now_mono),
            "outcome": self.outcome,
            "checkpoint_step": self.checkpoint_step,
            "events_revealed": self.visible_count(now_mono),
            "events_total": len(self.events),
            "num_groups": self.summary.num_groups,
            "num_trajectories": self.summary.num_trajectories,
            "reward_mean": self.summary.reward_mean,
            "experimental_config": self.experimental_config,
            "trajectory_groups": self.trajectory_groups,
        }


def _gradient_step(summary: BatchSummary, index: int, total: int, learning_rate: float) -> dict[str, float]:
    # A plausible, deterministic loss curve: it falls over the job's steps and with the reward spread.
    progress = (index + 1) / total
    loss = round((0.7 - 0.3 * progress) * (1.0 + summary.reward_std_dev), 6)
    return {
        "loss": loss,
        "grad_norm": round(0.9 - 0.4 * progress + 0.1 * summary.num_groups_trainable, 6),
        "learning_rate": learning_rate,
        "entropy": round(1.2 - 0.2 * progress, 6),
        "kl_div": round(0.01 * progress, 6),
        "num_trainable_tokens": float(summary.num_trainable_tokens),
        "num_datums": float(summary.num_trajectories),
    }


def build_job(
    payload: TrainingJobCreate,
    *,
    model_name: str,
    gradient_steps: int,
    pace_s: float,
    now_mono: float,
    now_unix: int,
    fault_kind: str | None = None,
    error_message: str = "",
    after_steps: int = 0,
) -> Job:
    summary = summarize(payload)
    config = payload.experimental_config or {}
    learning_rate = float(config.get("learning_rate") or 5e-6)
    steps = [_gradient_step(summary, i, gradient_steps, learning_rate) for i in range(gradient_steps)]

    def event(kind: str, data: dict[str, Any]) -> Event:
        return Event(id=str(uuid.uuid4()), type=kind, data=data)

    events = [event("training_started", {"num_sequences": gradient_steps})]
    if fault_kind == "stall":
        outcome = "stalled"
    elif fault_kind == "training_failed":
        outcome = "failed"
        events += [event("gradient_step", data) for data in steps[: min(after_steps, gradient_steps)]]
        events.append(event("training_failed", {"error_message": error_message}))
    else:
        outcome = "succeeded"
        events += [event("gradient_step", data) for data in steps]
        events.append(event("training_ended", {}))
    final = steps[-1]
    final_metrics = {
        "reward": summary.reward_mean,
        "reward_std_dev": summary.reward_std_dev,
        "loss": final["loss"],
        "grad_norm": final["grad_norm"],
        "num_trajectories": float(summary.num_trajectories),
        "num_groups_trainable": float(summary.num_groups_trainable),
    }
    return Job(
        id=str(uuid.uuid4()),
        model_id=payload.model_id,
        model_name=model_name,
        created_mono=now_mono,
        created_at=now_unix,
        pace_s=pace_s,
        events=events,
        outcome=outcome,
        summary=summary,
        final_metrics=final_metrics,
        experimental_config=payload.experimental_config,
        trajectory_groups=[g.model_dump(mode="json") for g in payload.trajectory_groups],
    )
