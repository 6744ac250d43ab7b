"""Deterministic OpenAI chat completions: same model + messages → same answer, tokens and logprobs.

Tokens look like vLLM's `return_tokens_as_token_ids` output (`token_id:<n>`), so the choices
this returns are trainable by ART. A tool call is made when `tool_choice` forces one
("required" or a named function) or, with "auto", when the last user message names a tool.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app_dev.emulator.schemas import ChatCompletionCreate

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar "
    "papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu buy sell hold market "
    "price trend agent signal risk reward trade position long short wait"
).split()


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(parts).encode()).digest()


def _token_id(text: str) -> int:
    return int.from_bytes(_digest("tok", text)[:4], "big") % 151_000


def _logprob(text: str, salt: str) -> float:
    return -round(0.01 + (int.from_bytes(_digest("lp", salt, text)[:2], "big") % 3000) / 1000, 4)


def count_tokens(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class Token:
    text: str
    logprob: float

    def logprob_entry(self, top: int, salt: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "token": f"token_id:{_token_id(self.text)}",
            "bytes": list(self.text.encode()),
            "logprob": self.logprob,
            "top_logprobs": [],
        }
        if top:
            alternatives = [self] + [
                Token(w, round(self.logprob - 0.5 * (i + 1), 4))
                for i, w in enumerate(_pick_words(f"{salt}/{self.text}", top - 1))
            ]
            entry["top_logprobs"] = [
                {
                    "token": f"token_id:{_token_id(t.text)}",
                    "bytes": list(t.text.encode()),
                    "logprob": t.logprob,
                }
                for t in alternatives[:top]
            ]
        return entry


def _pick_words(seed: str, count: int) -> list[str]:
    words: list[str] = []
    counter = 0
    while len(words) < count:
        block = _digest("words", seed, str(counter))
        words.extend(_WORDS[b % len(_WORDS)] for b in block)
        counter += 1
    return words[:count]


def _tokens_of(text: str, salt: str) -> list[Token]:
    # Whitespace-led word pieces, so joining the tokens gives the text back exactly.
    pieces: list[str] = []
    for i, word in enumerate(text.split(" ")):
        pieces.append(word if i == 0 else " " + word)
    return [Token(p, _logprob(p, salt)) for p in pieces if p]


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else json.dumps(content)


def _sample_value(schema: dict[str, Any], name: str) -> Any:
    kind = schema.get("type")
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "array":
        return [_sample_value(schema.get("items") or {"type": "string"}, name)]
    if kind == "object":
        return _sample_object(schema)
    return f"{name}-value"


def _sample_object(schema: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    return {key: _sample_value(sub if isinstance(sub, dict) else {}, key) for key, sub in properties.items()}


def _tool_name(tool: dict[str, Any]) -> str | None:
    function = tool.get("function")
    return function.get("name") if isinstance(function, dict) else None


def _chosen_tool(request: ChatCompletionCreate) -> dict[str, Any] | None:
    tools = [t for t in request.tools or [] if _tool_name(t)]
    choice = request.tool_choice
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        return next((t for t in tools if _tool_name(t) == wanted), None)
    if choice == "required":
        return tools[0]
    last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
    text = _message_text(last_user.content) if last_user else ""
    return next((t for t in tools if (_tool_name(t) or "") in text), None)


@dataclass(frozen=True)
class Generated:
    """One choice: either text content or a single tool call, and the tokens that carry it."""

    content: str | None
    tool_call: dict[str, Any] | None
    tokens: list[Token]
    finish_reason: str


def _generate_one(
    request: ChatCompletionCreate, index: int, budget: int, full: int, salt: str, skill: float | None = None
) -> Generated:
    tool = _chosen_tool(request)
    if tool is not None:
        function = tool["function"]
        arguments = json.dumps(_sample_object(function.get("parameters") or {}))
        call = {
            "id": "call_" + hashlib.sha256(f"{salt}/{index}".encode()).hexdigest()[:24],
            "type": "function",
            "function": {"name": function["name"], "arguments": arguments},
        }
        return Generated(None, call, _tokens_of(arguments, salt), "tool_calls")
    response_format = request.response_format or {}
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        text = json.dumps(_sample_object(schema))
        return Generated(text, None, _tokens_of(text, salt), "stop")
    if response_format.get("type") == "json_object":
        text = json.dumps({"answer": " ".join(_pick_words(f"{salt}/{index}", 3))})
        return Generated(text, None, _tokens_of(text, salt), "stop")
    words = _pick_words(f"{salt}/{index}", budget)
    if skill is not None:
        draw = int.from_bytes(_digest("skill", salt, str(index))[:8], "big") / 2**64
        words[0] = "win" if draw < skill else "lose"
    finish = "length" if budget < full else "stop"
    tokens = _tokens_of(" ".join(words), salt)
    return Generated("".join(t.text for t in tokens), None, tokens, finish)


def prompt_tokens(request: ChatCompletionCreate) -> int:
    total = 0
    for message in request.messages:
        total += 4 + count_tokens(_message_text(message.content))
    for tool in request.tools or []:
        total += count_tokens(json.dumps(tool))
    return total + 2


@dataclass(frozen=True)
class Completion:
    id: str
    created: int
    model: str
    choices: list[Generated]
    prompt_tokens: int
    salt: str

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.choices)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def generate(
    request: ChatCompletionCreate, *, completion_tokens: int, skill: float | None = None
) -> Completion:
    messages = json.dumps([m.model_dump(mode="json") for m in request.messages], sort_keys=True)
    salt = hashlib.sha256(f"{request.model}\x1f{messages}".encode()).hexdigest()
    limit = request.max_completion_tokens or request.max_tokens
    budget = min(completion_tokens, limit) if limit else completion_tokens
    # A `max_tokens` below the natural answer length cuts it short: finish_reason "length".
    choices = [_generate_one(request, i, budget, completion_tokens, salt, skill) for i in range(request.n)]
    return Completion(
        id="chatcmpl-" + uuid.uuid4().hex,
        created=int(time.time()),
        model=request.model,
        choices=choices,
        prompt_tokens=prompt_tokens(request),
        salt=salt,
    )


def _logprobs(tokens: list[Token], request: ChatCompletionCreate, salt: str) -> dict[str, Any] | None:
    if not request.logprobs:
        return None
    top = request.top_logprobs or 0
    return {"content": [t.logprob_entry(top, salt) for t in tokens], "refusal": None}


def completion_body(completion: Completion, request: ChatCompletionCreate) -> dict[str, Any]:
    choices = []
    for index, generated in enumerate(completion.choices):
        message: dict[str, Any] = {"role": "assistant", "content": generated.content, "refusal": None}
        if generated.tool_call is not None:
            message["tool_calls"] = [generated.tool_call]
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": _logprobs(generated.tokens, request, completion.salt),
                "finish_reason": generated.finish_reason,
            }
        )
    return {
        "id": completion.id,
        "object": "chat.completion",
        "created": completion.created,
        "model": completion.model,
        "choices": choices,
        "usage": completion.usage(),
        "system_fingerprint": "wandb-emulator",
    }


def _split(tokens: list[Token], pieces: int) -> list[list[Token]]:
    if not tokens:
        return []
    pieces = max(1, min(pieces, len(tokens)))
    size, extra = divmod(len(tokens), pieces)
    out: list[list[Token]] = []
    start = 0
    for i in range(pieces):
        end = start + size + (1 if i < extra else 0)
        out.append(tokens[start:end])
        start = end
    return out


def stream_chunks(
    completion: Completion, request: ChatCompletionCreate, pieces: int
) -> Iterator[dict[str, Any]]:
    """`chat.completion.chunk` objects: a role chunk, the content (or tool-call arguments) in
    `pieces` parts with their logprobs, a finish chunk, then a usage chunk if asked for."""
    include_usage = bool((request.stream_options or {}).get("include_usage"))

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": completion.id,
            "object": "chat.completion.chunk",
            "created": completion.created,
            "model": completion.model,
            "system_fingerprint": "wandb-emulator",
            "choices": choices,
        }
        if include_usage:
            body["usage"] = None
        return body

    for index, generated in enumerate(completion.choices):
        first: dict[str, Any] = {"role": "assistant", "content": "" if generated.tool_call is None else None}
        if generated.tool_call is not None:
            call = generated.tool_call
            first["tool_calls"] = [
                {
                    "index": 0,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
            ]
        yield chunk([{"index": index, "delta": first, "logprobs": None, "finish_reason": None}])
        for part in _split(generated.tokens, pieces):
            text = "".join(t.text for t in part)
            delta: dict[str, Any]
            if generated.tool_call is not None:
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}
            else:
                delta = {"content": text}
            yield chunk(
                [
                    {
                        "index": index,
                        "delta": delta,
                        "logprobs": _logprobs(part, request, completion.salt),
                        "finish_reason": None,
                    }
                ]
            )
        yield chunk(
            [{"index": index, "delta": {}, "logprobs": None, "finish_reason": generated.finish_reason}]
        )
    if include_usage:
        final = chunk([])
        final["usage"] = completion.usage()
        yield final
