"""The numbers a dataset reports about its build (the `stats` object of a dataset)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# why a readable row is not in the dataset
NOT_REPRESENTATIVE = "not_representative"  # another trajectory of the same agent and window was kept
NOT_SELECTED = "not_selected"  # left out by the group size cap (spread of rewards kept)
GROUP_DROPPED = "group_dropped"  # its group was dropped (see groups.dropped_by_reason)

# where a kept trajectory's chat turns came from
FROM_CAPTURES = "captures"
FROM_LLM_CALLS = "llm_calls"
FROM_LLM_CALL_LOGS = "llm_call_logs"
FROM_ENVIRONMENT = "environment"
FROM_PUSHED = "pushed"
FROM_FILE = "file"


@dataclass
class RunningMoments:
    """Mean and population standard deviation in one pass (Welford)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)
        self.low = min(self.low, x)
        self.high = max(self.high, x)

    def to_dict(self) -> dict[str, float | None]:
        if not self.n:
            return {"mean": None, "std": None, "min": None, "max": None}
        return {
            "mean": self.mean,
            "std": math.sqrt(self.m2 / self.n),
            "min": self.low,
            "max": self.high,
        }


@dataclass
class BuildStats:
    rows_read: int = 0
    rows_used: int = 0
    rows_rejected: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    ignored_by_reason: Counter[str] = field(default_factory=Counter)
    step_formats: Counter[str] = field(default_factory=Counter)
    windows: int = 0
    groups_kept: int = 0
    groups_dropped_by_reason: Counter[str] = field(default_factory=Counter)
    group_size_min: int = 0
    group_size_max: int = 0
    rewards: RunningMoments = field(default_factory=RunningMoments)
    trainable_turns: int = 0
    context_only_turns: int = 0
    with_trainable_turns: int = 0
    context_sources: Counter[str] = field(default_factory=Counter)
    captures_invalid: int = 0
    scores_persisted: int = 0
    scores_written_back: int = 0
    write_back_error: str | None = None
    rejections_listed: int = 0
    duration_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_ignored(self) -> int:
        return sum(self.ignored_by_reason.values())

    def reject(self, reason: str) -> None:
        self.rows_rejected += 1
        self.rejected_by_reason[reason] += 1

    def add_group(self, rewards: list[float], trainable: int, context_only: int, with_trainable: int) -> None:
        size = len(rewards)
        self.group_size_min = size if not self.groups_kept else min(self.group_size_min, size)
        self.group_size_max = max(self.group_size_max, size)
        self.groups_kept += 1
        self.rows_used += size
        for r in rewards:
            self.rewards.add(r)
        self.trainable_turns += trainable
        self.context_only_turns += context_only
        self.with_trainable_turns += with_trainable

    def to_dict(self) -> dict[str, Any]:
        dropped = sum(self.groups_dropped_by_reason.values())
        out: dict[str, Any] = {
            "rows": {
                "read": self.rows_read,
                "used": self.rows_used,
                "ignored": self.rows_ignored,
                "rejected": self.rows_rejected,
            },
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "ignored_by_reason": dict(sorted(self.ignored_by_reason.items())),
            "step_formats": dict(sorted(self.step_formats.items())),
            "windows": self.windows,
            "groups": {
                "kept": self.groups_kept,
                "dropped": dropped,
                "dropped_by_reason": dict(sorted(self.groups_dropped_by_reason.items())),
            },
            "trajectories_per_group": {
                "min": self.group_size_min if self.groups_kept else None,
                "max": self.group_size_max if self.groups_kept else None,
                "mean": self.rows_used / self.groups_kept if self.groups_kept else None,
            },
            "reward": self.rewards.to_dict(),
            "trainable_turns": self.trainable_turns,
            "context_only_turns": self.context_only_turns,
            "trajectories": {
                "with_trainable_turns": self.with_trainable_turns,
                "context_only": self.rows_used - self.with_trainable_turns,
            },
            "context_sources": dict(sorted(self.context_sources.items())),
            "captures_invalid": self.captures_invalid,
            "scores": {
                "persisted": self.scores_persisted,
                "written_back": self.scores_written_back,
                "write_back_error": self.write_back_error,
            },
            "rejections_listed": self.rejections_listed,
            "duration_s": round(self.duration_s, 3),
        }
        out.update(self.extra)
        return out
