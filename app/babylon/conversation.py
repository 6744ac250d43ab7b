"""The chat turns of a game trajectory when no captured completion has them (context only).

Two sources, best first (captured completions come before both, app/datasets/captures.py):
1. the prompts the game logged (`llmCalls` in the steps, or `llm_call_logs` rows);
2. the environment state and action of each step, rendered as `babylon_trainer.py` does
   (system / user "Balance: …" / assistant "<actionType> <parameters>").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from app.babylon.steps import action_of, action_type, environment_of, llm_calls_of, parameters_of
from app.trajectories.art_shape import JsonDict
from app.trajectories.context import ConversationBuilder

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
