"""Validation of ART-shaped trajectories sent by clients (`POST /v1/trajectories`, JSONL files).

ART itself never validates message dicts (art-serverless.md §2.4), so a typo such as
`"messages"` for `"messages_and_choices"` or a string reward would only fail on the W&B
server, long after the upload. Each problem is reported with the path of the offending field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from app.trajectories.art_shape import (
    TRAJECTORY_KEYS,
    ChoiceError,
    JsonDict,
    history_dict,
    is_choice,
    normalize_choice,
    trajectory_dict,
)

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_ID_LENGTH = 200


class Problem(Exception):
    """What is wrong with one field: `param` is its path, e.g. `messages_and_choices[2].role`."""

    def __init__(self, param: str, message: str, code: str = "invalid_trajectory") -> None:
        super().__init__(param, message, code)
        self.param = param
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _message(entry: Mapping[str, Any], param: str) -> JsonDict:
    role = entry.get("role")
    if role is None:
        raise Problem(_join(param, "role"), "is required", "message_missing_key")
    if role not in ROLES:
        raise Problem(_join(param, "role"), f"unrecognized role {role!r}", "unrecognized_role")
    content = entry.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise Problem(_join(param, "content"), f"must be a string or an array, got {_type_name(content)}")
    if role in ("system", "developer", "user") and content is None:
        raise Problem(_join(param, "content"), "is required", "missing_content")
    if role == "assistant" and content is None and not entry.get("tool_calls"):
        raise Problem(_join(param, "content"), "an assistant message needs content or tool_calls")
    if role == "tool" and not isinstance(entry.get("tool_call_id"), str):
        raise Problem(_join(param, "tool_call_id"), "is required for a tool message")
    return dict(entry)


def _messages_and_choices(value: object, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise Problem(param, f"must be an array, got {_type_name(value)}", "missing_messages_list")
    if not value:
        raise Problem(param, "must not be empty", "missing_messages_list")
    out: list[Any] = []
    for i, entry in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(entry, dict):
            raise Problem(where, f"must be an object, got {_type_name(entry)}")
        if is_choice(entry):
            try:
                out.append(normalize_choice(entry))
            except ChoiceError as exc:
                raise Problem(where, f"invalid Choice: {exc}", "invalid_choice") from None
        else:
            out.append(_message(entry, where))
    return out


def _tools(value: object, param: str) -> list[Any] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise Problem(param, "must be an array of tool objects")
    return list(value)


def _scalar_map(value: object, param: str, *, allow_str: bool) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Problem(param, f"must be an object, got {_type_name(value)}")
    for key, item in value.items():
        ok = (
            item is None or isinstance(item, (bool, str)) or is_number(item)
            if allow_str
            else isinstance(item, bool) or is_number(item)
        )
        if not ok:
            kinds = "strings, numbers, booleans or null" if allow_str else "numbers or booleans"
            raise Problem(_join(param, str(key)), f"values must be {kinds}, got {_type_name(item)}")
    return dict(value)


def normalize_trajectory(value: object, param: str = "", *, require_scenario_id: bool = False) -> JsonDict:
    """Return the trajectory as ART dumps it, or raise Problem naming the first bad field."""
    if not isinstance(value, dict):
        raise Problem(param, f"a trajectory must be an object, got {_type_name(value)}")
    unknown = sorted(set(value) - set(TRAJECTORY_KEYS))
    if "messages_and_choices" not in value:
        hint = " (found 'messages'; ART calls it messages_and_choices)" if "messages" in value else ""
        raise Problem(_join(param, "messages_and_choices"), "is required" + hint, "missing_messages_list")
    if unknown:
        raise Problem(_join(param, unknown[0]), "unrecognized key", "unrecognized_key")
    messages = _messages_and_choices(value["messages_and_choices"], _join(param, "messages_and_choices"))
    if "reward" not in value:
        raise Problem(_join(param, "reward"), "is required", "missing_reward")
    reward = value["reward"]
    if not is_number(reward):
        raise Problem(
            _join(param, "reward"), f"must be a finite number, got {_type_name(reward)}", "invalid_reward"
        )
    metadata = _scalar_map(value.get("metadata"), _join(param, "metadata"), allow_str=True)
    if require_scenario_id:
        scenario = metadata.get("scenario_id")
        if not isinstance(scenario, str) or not scenario.strip():
            raise Problem(
                _join(param, "metadata.scenario_id"),
                "is required (a non-empty string)",
                "missing_scenario_id",
            )
    for key in ("scenario_id", "trajectory_id", "agent_id"):
        item = metadata.get(key)
        if isinstance(item, str) and len(item) > MAX_ID_LENGTH:
            raise Problem(_join(param, f"metadata.{key}"), f"must be at most {MAX_ID_LENGTH} characters")
    metrics = _scalar_map(value.get("metrics"), _join(param, "metrics"), allow_str=False)
    histories = []
    raw_histories = value.get("additional_histories") or []
    if not isinstance(raw_histories, list):
        raise Problem(_join(param, "additional_histories"), "must be an array")
    for i, history in enumerate(raw_histories):
        where = _join(param, f"additional_histories[{i}]")
        if not isinstance(history, dict):
            raise Problem(where, f"must be an object, got {_type_name(history)}")
        histories.append(
            history_dict(
                _messages_and_choices(
                    history.get("messages_and_choices"), _join(where, "messages_and_choices")
                ),
                _tools(history.get("tools"), _join(where, "tools")),
            )
        )
    logs = value.get("logs") or []
    if not isinstance(logs, list) or not all(isinstance(x, str) for x in logs):
        raise Problem(_join(param, "logs"), "must be an array of strings")
    versions: dict[str, int | None] = {}
    for key in ("initial_policy_version", "final_policy_version"):
        item = value.get(key)
        if item is not None and (not isinstance(item, int) or isinstance(item, bool)):
            raise Problem(_join(param, key), f"must be an integer or null, got {_type_name(item)}")
        versions[key] = item
    return trajectory_dict(
        messages,
        reward=float(reward),
        metadata=metadata,
        metrics=metrics,
        tools=_tools(value.get("tools"), _join(param, "tools")),
        additional_histories=histories,
        initial_policy_version=versions["initial_policy_version"],
        final_policy_version=versions["final_policy_version"],
        logs=logs,
    )
