"""Chat calls merged into conversations, in ART's `messages_and_choices` shape.

The calls come from completions captured by the gateway (request messages + the sampled
`Choice` with logprobs: the only turns ART can train, app/datasets/captures.py) or from
prompts a game logged (context only; the Babylon adapter's app/babylon/conversation.py).

Calls are merged into conversations: a request that repeats an earlier conversation and
continues it extends that conversation (the repeated messages are kept once); a request
that starts afresh (the game sends a new system + user pair per action) becomes one of the
trajectory's `additional_histories`, which ART trains with the trajectory's advantage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.trajectories.art_shape import JsonDict, as_message, history_dict


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
