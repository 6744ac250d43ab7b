"""Capture: how a chat completion becomes trainable data.

A request whose OpenAI `metadata` carries `trajectory_id` is captured: the gateway asks the
upstream for logprobs, and stores the request messages (+ tools) and the sampled `choices[0]`
with its logprobs, as ART's `Choice` expects (art-serverless.md §2.4). A streamed answer is
rebuilt here into that same non-streamed `Choice` (content, tool calls, logprobs).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from app.errors import BadRequest
from app.ids import new_id

MAX_ID_LENGTH = 200  # the captured_completions columns


@dataclass(frozen=True, slots=True)
class CaptureTarget:
    """Where a captured completion belongs: `metadata.trajectory_id` (+ agent and step)."""

    trajectory_id: str
    agent_id: str | None
    step: int | None


def parse_metadata(metadata: Any) -> CaptureTarget | None:
    """The capture target named by a request's `metadata`, None when it names none.

    OpenAI metadata values are strings, so `step` may come as "3"; both forms are accepted.
    """
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise BadRequest("metadata must be an object of string values", param="metadata")
    trajectory_id = metadata.get("trajectory_id")
    if trajectory_id is None:
        return None
    if not isinstance(trajectory_id, str) or not trajectory_id.strip():
        raise BadRequest("metadata.trajectory_id must be a non-empty string", param="metadata.trajectory_id")
    if len(trajectory_id) > MAX_ID_LENGTH:
        raise BadRequest(
            f"metadata.trajectory_id is longer than {MAX_ID_LENGTH} characters",
            param="metadata.trajectory_id",
        )
    agent_id = metadata.get("agent_id")
    if agent_id is not None and (not isinstance(agent_id, str) or len(agent_id) > MAX_ID_LENGTH):
        raise BadRequest(
            f"metadata.agent_id must be a string of at most {MAX_ID_LENGTH} characters",
            param="metadata.agent_id",
        )
    return CaptureTarget(trajectory_id, agent_id or None, _parse_step(metadata.get("step")))


def _parse_step(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRequest("metadata.step must be a non-negative integer", param="metadata.step")
    if isinstance(value, int):
        step = value
    elif isinstance(value, str) and value.strip().isdigit():
        step = int(value.strip())
    else:
        raise BadRequest("metadata.step must be a non-negative integer", param="metadata.step")
    if step < 0 or step > 2**31 - 1:
        raise BadRequest("metadata.step must be a non-negative 32-bit integer", param="metadata.step")
    return step


def capture_row(
    target: CaptureTarget,
    *,
    requested_model: str,
    upstream_model: str,
    messages: list[Any],
    tools: Any,
    choice: dict[str, Any],
    usage: dict[str, Any] | None,
    latency_ms: float,
) -> dict[str, Any]:
    """A `captured_completions` row (the background writer inserts it)."""
    return {
        "id": new_id("cap"),
        "created_at": dt.datetime.now(dt.UTC),
        "trajectory_id": target.trajectory_id,
        "agent_id": target.agent_id,
        "step": target.step,
        "model": requested_model[:500],
        "upstream_model": upstream_model[:500],
        "messages": messages,
        "tools": tools if isinstance(tools, list) else None,
        "choice": choice,
        "usage": usage if isinstance(usage, dict) else None,
        "latency_ms": round(latency_ms, 3),
    }


def strip_logprobs(choices: Any) -> None:
    """Remove the logprobs the gateway asked for and the caller did not (in place)."""
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and "logprobs" in choice:
                choice["logprobs"] = None


@dataclass(slots=True)
class _ToolCall:
    id: str | None = None
    type: str = "function"
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StreamAssembler:
    """Rebuilds `choices[0]` of a streamed completion as the `Choice` a non-streamed call returns."""

    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    saw_content: bool = False
    refusal: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    logprob_content: list[Any] = field(default_factory=list)
    logprob_refusal: list[Any] = field(default_factory=list)
    saw_logprobs: bool = False
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if delta.get("role"):
            self.role = delta["role"]
        if delta.get("content") is not None:
            self.saw_content = True
            self.content.append(delta["content"])
        if delta.get("refusal"):
            self.refusal.append(delta["refusal"])
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str):
            self.reasoning.append(reasoning)
        for call in delta.get("tool_calls") or ():
            self._add_tool_call(call)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            self.saw_logprobs = True
            self.logprob_content.extend(logprobs.get("content") or ())
            self.logprob_refusal.extend(logprobs.get("refusal") or ())
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]

    def _add_tool_call(self, call: dict[str, Any]) -> None:
        index = call.get("index", len(self.tool_calls))
        acc = self.tool_calls.get(index)
        if acc is None:
            acc = self.tool_calls[index] = _ToolCall()
        if call.get("id"):
            acc.id = call["id"]
        if call.get("type"):
            acc.type = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            acc.name += function["name"]
        if function.get("arguments"):
            acc.arguments.append(function["arguments"])

    @property
    def finished(self) -> bool:
        """The upstream said why generation stopped: the sample is complete."""
        return self.finish_reason is not None

    def choice(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": self.role,
            "content": "".join(self.content) if self.saw_content else None,
        }
        if self.refusal:
            message["refusal"] = "".join(self.refusal)
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": acc.id,
                    "type": acc.type,
                    "function": {"name": acc.name, "arguments": "".join(acc.arguments)},
                }
                for _, acc in sorted(self.tool_calls.items())
            ]
        logprobs: dict[str, Any] | None = None
        if self.saw_logprobs:
            logprobs = {"content": self.logprob_content, "refusal": self.logprob_refusal or None}
        return {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": self.finish_reason}
