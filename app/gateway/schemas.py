"""The chat-completions request shape, for OpenAPI (the body is read raw on the hot path)."""

from __future__ import annotations

from typing import Any

# The chat body is read raw (no pydantic on the hot path); this documents it in OpenAPI.
CHAT_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": True,
    "properties": {
        "model": {
            "type": "string",
            "description": "a job's fine_tuned_model, ftckpt-…, ftjob-…, <model>, <model>:<alias>, "
            "<model>:step<N>, wandb-artifact:///<entity>/<project>/<name>[:<alias>|:step<N>], "
            "or an allowed base model",
        },
        "messages": {"type": "array", "items": {"type": "object"}},
        "stream": {"type": "boolean", "default": False},
        "logprobs": {"type": "boolean"},
        "tools": {"type": "array", "items": {"type": "object"}},
        "metadata": {
            "type": "object",
            "description": "not forwarded upstream; metadata.trajectory_id (optional agent_id, step) "
            "captures the sampled completion with its logprobs for training",
            "properties": {
                "trajectory_id": {"type": "string", "maxLength": 200},
                "agent_id": {"type": "string", "maxLength": 200},
                "step": {"type": "string", "pattern": "^[0-9]+$"},
            },
            "additionalProperties": {"type": "string"},
        },
    },
}
