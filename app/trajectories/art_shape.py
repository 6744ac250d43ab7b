"""ART's trajectory shape as plain JSON, without importing openpipe-art.

A stored trajectory is exactly `art.Trajectory(...).model_dump(mode="json")` (what ART sends
to W&B; art-serverless.md §7.6). Building that dict directly keeps the dataset builder fast
and keeps `import art` (which loads `.env` and LiteLLM) out of the API process; a test checks
that these dicts equal ART's own dump.

Trainable turns (art-serverless.md §2.4): assistant entries that are `Choice` objects (dicts
with a "message") with non-empty logprobs. Plain assistant messages are context only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openai.types.chat.chat_completion import Choice
from pydantic import ValidationError

JsonDict = dict[str, Any]
# art.Trajectory.model_dump(mode="json") keys, in ART's order (start_time is excluded by ART)
TRAJECTORY_KEYS = (
    "messages_and_choices",
    "tools",
    "additional_histories",
    "reward",
    "initial_policy_version",
    "final_policy_version",
    "metrics",
    "metadata",
    "logs",
)
HISTORY_KEYS = ("messages_and_choices", "tools")
# the server schema's Choice.finish_reason values (art-serverless.md §2.4)
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


def trajectory_dict(
    messages_and_choices: list[Any],
    *,
    reward: float,
    metadata: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    tools: list[Any] | None = None,
    additional_histories: Sequence[JsonDict] = (),
    initial_policy_version: int | None = None,
    final_policy_version: int | None = None,
    logs: Sequence[str] = (),
) -> JsonDict:
    """The dict `art.Trajectory(...).model_dump(mode="json")` would give for these fields."""
    return {
        "messages_and_choices": messages_and_choices,
        "tools": tools,
        "additional_histories": list(additional_histories),
        "reward": float(reward),
        "initial_policy_version": initial_policy_version,
        "final_policy_version": final_policy_version,
        "metrics": dict(metrics or {}),
        "metadata": dict(metadata or {}),
        "logs": list(logs),
    }


def history_dict(messages_and_choices: list[Any], tools: list[Any] | None = None) -> JsonDict:
    """The dict `art.trajectories.History(...).model_dump(mode="json")` would give."""
    return {"messages_and_choices": messages_and_choices, "tools": tools}


class ChoiceError(ValueError):
    """A Choice that ART's server would not accept; the message says why."""


def normalize_choice(choice: Mapping[str, Any]) -> JsonDict:
    """Validate an OpenAI `choices[i]` object and return it as ART dumps a `Choice`.

    The openai SDK model fills the optional message fields (refusal, annotations, …) exactly as
    ART's `model_dump(mode="json")` does, so stored and sent JSON are identical.
    """
    finish = choice.get("finish_reason")
    if finish not in FINISH_REASONS:
        raise ChoiceError(f"finish_reason must be one of {sorted(FINISH_REASONS)}, got {finish!r}")
    try:
        dumped: JsonDict = Choice.model_validate(dict(choice)).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ChoiceError(f"{where}: {first.get('msg')}" if where else str(first.get("msg"))) from None
    return dumped


def is_choice(entry: object) -> bool:
    """ART treats an entry with a "message" key as a Choice (its own loader's rule)."""
    return isinstance(entry, dict) and "message" in entry


def has_logprobs(choice: Mapping[str, Any]) -> bool:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return False
    return bool(logprobs.get("content")) or bool(logprobs.get("refusal"))


@dataclass(frozen=True)
class TurnCounts:
    trainable: int = 0  # Choices with logprobs: what ART trains
    context_only: int = 0  # assistant turns that are plain messages or Choices without logprobs

    def __add__(self, other: TurnCounts) -> TurnCounts:
        return TurnCounts(self.trainable + other.trainable, self.context_only + other.context_only)


def count_entries(entries: Iterable[Any]) -> TurnCounts:
    trainable = context = 0
    for entry in entries:
        if is_choice(entry):
            if has_logprobs(entry):
                trainable += 1
            else:
                context += 1
        elif isinstance(entry, dict) and entry.get("role") == "assistant":
            context += 1
    return TurnCounts(trainable, context)


def count_turns(trajectory: Mapping[str, Any]) -> TurnCounts:
    """Assistant turns of a stored trajectory, its additional histories included."""
    counts = count_entries(trajectory.get("messages_and_choices") or ())
    for history in trajectory.get("additional_histories") or ():
        if isinstance(history, dict):
            counts = counts + count_entries(history.get("messages_and_choices") or ())
    return counts


def as_message(entry: Mapping[str, Any]) -> JsonDict:
    """The chat message an entry stands for (a Choice becomes its assistant message)."""
    if "message" in entry and isinstance(entry["message"], dict):
        return dict(entry["message"])
    return dict(entry)
