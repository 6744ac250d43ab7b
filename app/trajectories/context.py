"""The chat turns of a game trajectory, in ART's `messages_and_choices` shape.

Three sources, best first:
1. completions captured by the inference gateway (request messages + the sampled `Choice`
   with logprobs): the only turns ART can train;
2. the prompts the game logged (`llmCalls` in the steps, or `llm_call_logs` rows): context only;
3. the environment state and action of each step, rendered as `babylon_trainer.py` does
   (system / user "Balance: …" / assistant "<actionType> <parameters>"): context only.

Calls are merged into conversations: a request that repeats an earlier conversation and
continues it extends that conversation (the repeated messages are kept once); a request
that starts afresh (the game sends a new system + user pair per action) becomes one of the
trajectory's `additional_histories`, which ART trains with the trajectory's advantage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.babylon.steps import (
    action_of,
    action_type,
    environment_of,
    llm_calls_of,
    parameters_of,
)
from app.trajectories.art_shape import JsonDict, as_message, history_dict

SYSTEM_PROMPT = "You are a trading agent in Babylon prediction markets. Make profitable decisions."


def _money(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.0f}"
    return str(value)


def environment_messages(steps: Sequence[Mapping[str, Any]]) -> list[JsonDict]:
    """System, then per step the state as a user turn and the action as an assistant turn."""
    messages: list[JsonDict] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for step in steps:
        env = environment_of(dict(step))
        action = action_of(dict(step))
        messages.append(
            {
                "role": "user",
                "content": f"Balance: ${_money(env.get('agentBalance', 0))}, "
                f"P&L: ${_money(env.get('agentPnL', 0))}, Positions: {env.get('openPositions', 0)}",
            }
        )
        text = action_type(action) or "wait"
        params = parameters_of(action)
        if params:
            text = f"{text} {orjson.dumps(params).decode()}"
        messages.append({"role": "assistant", "content": text})
    return messages


def _content_key(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()


def _message_key(message: Mapping[str, Any]) -> tuple[str, str, str]:
    tool_calls = message.get("tool_calls")
    calls = orjson.dumps(tool_calls, option=orjson.OPT_SORT_KEYS).decode() if tool_calls else ""
    return (str(message.get("role")), _content_key(message.get("content")), calls)


@dataclass
class _Conversation:
    entries: list[Any] = field(default_factory=list)
    keys: list[tuple[str, str, str]] = field(default_factory=list)
    tools: list[Any] | None = None


class ConversationBuilder:
    """Collects (request messages, reply) calls in order and merges repeated prefixes."""

    def __init__(self) -> None:
        self._conversations: list[_Conversation] = []

    def add(
        self, request: Sequence[Mapping[str, Any]], reply: Mapping[str, Any], tools: list[Any] | None = None
    ) -> None:
        request_keys = [_message_key(m) for m in request]
        for conv in reversed(self._conversations):
            n = len(conv.keys)
            if (
                n <= len(request_keys)
                and request_keys[:n] == conv.keys
                and (conv.tools or None) == (tools or None)
            ):
                conv.entries.extend(dict(m) for m in request[n:])
                conv.keys.extend(request_keys[n:])
                break
        else:
            conv = _Conversation(tools=tools)
            conv.entries.extend(dict(m) for m in request)
            conv.keys.extend(request_keys)
            self._conversations.append(conv)
        conv.entries.append(dict(reply))
        conv.keys.append(_message_key(as_message(reply)))

    @property
    def empty(self) -> bool:
        return not self._conversations

    def build(self) -> tuple[list[Any], list[Any] | None, list[JsonDict]]:
        """(messages_and_choices, tools, additional_histories)."""
        if not self._conversations:
            return [], None, []
        main, *rest = self._conversations
        return main.entries, main.tools, [history_dict(c.entries, c.tools) for c in rest]


def _request_of_call(call: Mapping[str, Any]) -> list[JsonDict]:
    messages = call.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages):
        return [dict(m) for m in messages]
    request: list[JsonDict] = []
    system = call.get("systemPrompt")
    if isinstance(system, str) and system:
        request.append({"role": "system", "content": system})
    user = call.get("userPrompt")
    if isinstance(user, str) and user:
        request.append({"role": "user", "content": user})
    return request


def add_logged_call(builder: ConversationBuilder, call: Mapping[str, Any]) -> bool:
    """Add one logged LLM call (a step's `llmCalls[]` entry or an `llm_call_logs` row)."""
    request = _request_of_call(call)
    response = call.get("response")
    if not request or not isinstance(response, str):
        return False
    builder.add(request, {"role": "assistant", "content": response})
    return True


def logged_call_conversations(steps: Iterable[Mapping[str, Any]]) -> ConversationBuilder:
    builder = ConversationBuilder()
    for step in steps:
        for call in llm_calls_of(dict(step)):
            add_logged_call(builder, call)
    return builder
