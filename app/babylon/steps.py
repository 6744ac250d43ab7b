"""Parsing of the game's `"stepsJson"` (babylon-data.md §3): both step formats, every
optional key optional, one reason code per unusable row.

The two writers: the Recorder (`TrajectoryRecorder.ts`, the live game) and the plugin
(`TrajectoryLoggerService.ts`, a superset with `stepId`, `observation`, `done`, attempt-style
actions whose `actionType` may be the placeholder `'pending'`). This module is on the
builder's hot path: one `orjson.loads` and one short loop per row.
"""

from __future__ import annotations

from typing import Any

import orjson

# Reason codes a row can be rejected with (counted in dataset stats, listed on request).
INVALID_JSON = "invalid_json"
NOT_A_LIST = "not_a_list"
NO_STEPS = "no_steps"
STEP_NOT_AN_OBJECT = "step_not_an_object"
MISSING_REWARD = "missing_reward"
NON_NUMERIC_REWARD = "non_numeric_reward"
MISSING_AGENT = "missing_agent"
REJECTION_REASONS = (
    INVALID_JSON,
    NOT_A_LIST,
    NO_STEPS,
    STEP_NOT_AN_OBJECT,
    MISSING_REWARD,
    NON_NUMERIC_REWARD,
    MISSING_AGENT,
)

RECORDER = "recorder"
PLUGIN = "plugin"
_PLUGIN_ONLY_KEYS = ("stepId", "observation", "done")
_MISSING = object()


class RowRejected(Exception):
    """A row the builder cannot use; `reason` is one of the codes above (or a scorer's)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


def load_steps(raw: bytes | str) -> list[dict[str, Any]]:
    """Parse and check one row's steps; raise RowRejected with the first problem found."""
    try:
        steps = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RowRejected(INVALID_JSON, str(exc)[:300]) from None
    if type(steps) is not list:
        if steps is None:
            raise RowRejected(NO_STEPS, "stepsJson is null")
        raise RowRejected(NOT_A_LIST, f"stepsJson is a JSON {_kind(steps)}, not an array")
    if not steps:
        raise RowRejected(NO_STEPS, "stepsJson is []")
    for i, step in enumerate(steps):
        if type(step) is not dict:
            raise RowRejected(STEP_NOT_AN_OBJECT, f"step {i} is a JSON {_kind(step)}")
        reward = step.get("reward", _MISSING)
        kind = type(reward)
        # JSON has no NaN/Infinity, so every parsed float is finite
        if kind is float or kind is int:
            continue
        if reward is _MISSING or reward is None:
            raise RowRejected(MISSING_REWARD, f"step {i} has no reward")
        raise RowRejected(NON_NUMERIC_REWARD, f"step {i} reward is a {_kind(reward)}")
    return steps


def step_format(steps: list[dict[str, Any]]) -> str:
    first = steps[0]
    for key in _PLUGIN_ONLY_KEYS:
        if key in first:
            return PLUGIN
    return RECORDER


def action_of(step: dict[str, Any]) -> dict[str, Any]:
    action = step.get("action")
    return action if type(action) is dict else {}


def action_type(action: dict[str, Any]) -> str:
    """The action's type; the plugin's placeholder `'pending'` falls back to its `actionName`."""
    kind = action.get("actionType")
    if type(kind) is str and kind != "pending":
        return kind
    name = action.get("actionName")
    if type(name) is str:
        return name
    return kind if type(kind) is str else ""


def parameters_of(action: dict[str, Any]) -> dict[str, Any]:
    params = action.get("parameters")
    return params if type(params) is dict else {}


def environment_of(step: dict[str, Any]) -> dict[str, Any]:
    env = step.get("environmentState")
    return env if type(env) is dict else {}


def llm_calls_of(step: dict[str, Any]) -> list[dict[str, Any]]:
    calls = step.get("llmCalls")
    if type(calls) is not list:
        return []
    return [c for c in calls if type(c) is dict]


def to_number(value: object) -> float | None:
    """A float for numbers and numeric strings (the game's Python does `float(x)`), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if number == number and abs(number) != float("inf") else None
    return None
