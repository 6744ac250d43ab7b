"""Stored dataset groups → ART `TrajectoryGroup`s, with every sampled choice rebuilt as a `Choice`.

Trajectories are stored as `Trajectory.model_dump(mode="json")`, which turns each `Choice` into
a plain dict; ART would then treat it as context, not as a trainable turn (art-serverless.md
§7.6). Entries with a "message" key are validated back into `Choice` objects.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from app.training.art_env import import_art
from app.training.remote import GroupPayload


def _entry(entry: Any) -> Any:
    from openai.types.chat.chat_completion import Choice

    if isinstance(entry, dict) and "message" in entry:
        try:
            return Choice.model_validate(entry)
        except ValidationError:
            return entry  # not a well-formed choice: ART sends it as context, as stored
    return entry


def _messages(items: Sequence[Any]) -> list[Any]:
    return [_entry(item) for item in items]


def trajectory_from_dict(data: dict[str, Any]) -> Any:
    art = import_art()
    from art.trajectories import History

    base = {k: v for k, v in data.items() if k not in ("messages_and_choices", "additional_histories")}
    trajectory = art.Trajectory.model_validate({**base, "messages_and_choices": []})
    trajectory.messages_and_choices = _messages(data.get("messages_and_choices") or [])
    trajectory.additional_histories = [
        History(
            messages_and_choices=_messages(h.get("messages_and_choices") or []),
            **({"tools": h["tools"]} if h.get("tools") is not None else {}),
        )
        for h in data.get("additional_histories") or []
    ]
    return trajectory


def trajectory_groups(groups: Sequence[GroupPayload]) -> list[Any]:
    art = import_art()
    return [
        art.TrajectoryGroup(
            [trajectory_from_dict(t) for t in group.trajectories],
            metadata={"scenario_id": group.scenario_id},
        )
        for group in groups
    ]


def reward_metrics(groups: Sequence[tuple[Sequence[float], int]]) -> dict[str, float]:
    """What the step trained on, from each group's (rewards, trainable turns): counts and reward statistics."""
    rewards = [float(r) for group_rewards, _turns in groups for r in group_rewards]
    metrics: dict[str, float] = {
        "num_groups": float(len(groups)),
        "num_trajectories": float(len(rewards)),
        "trainable_turns": float(sum(turns for _rewards, turns in groups)),
    }
    if rewards:
        metrics["reward_mean"] = statistics.fmean(rewards)
        metrics["reward_std"] = statistics.pstdev(rewards)
    return metrics
