"""The training file's format, with a complete example line (shown in the OpenAPI document and
the README; tests/files/test_training_file.py checks that the example uploads and trains)."""

from __future__ import annotations

from typing import Any

import orjson


def _choice(answer: str, tokens: list[tuple[str, float]]) -> dict[str, Any]:
    """An assistant turn as OpenAI's `Choice`, with the logprobs of the sampled tokens."""
    return {
        "finish_reason": "stop",
        "index": 0,
        "message": {"role": "assistant", "content": answer},
        "logprobs": {
            "content": [
                {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}
                for token, logprob in tokens
            ]
        },
    }


_SYSTEM = {"role": "system", "content": "You trade prediction markets. Answer YES, NO or HOLD."}
_USER = {"role": "user", "content": "Will TechCorp close above 120 today?"}

# One GRPO group: two agents answered the same question; the rewards say which did better.
TRAINING_FILE_EXAMPLE: dict[str, Any] = {
    "trajectories": [
        {
            "messages_and_choices": [_SYSTEM, _USER, _choice("YES", [("YES", -0.31)])],
            "reward": 1.0,
            "metadata": {"agent_id": "agent-1"},
        },
        {
            "messages_and_choices": [_SYSTEM, _USER, _choice("NO", [("NO", -1.27)])],
            "reward": -0.5,
            "metadata": {"agent_id": "agent-2"},
        },
    ],
    "metadata": {"scenario_id": "2025-11-14T10:00"},
}
TRAINING_FILE_EXAMPLE_LINE = orjson.dumps(TRAINING_FILE_EXAMPLE).decode()

TRAINING_FILE_FORMAT = f"""
A JSONL file, one GRPO group per line (ART's `TrajectoryGroup`): `{{"trajectories": [...],
"metadata": {{"scenario_id": ...}}}}`. Each trajectory has `messages_and_choices`, a `reward` and
optional `metadata`, `tools`, `additional_histories`. Trajectories of a group answered the same
scenario; their rewards are compared, so a group needs at least two with different rewards to
teach anything.

**Only assistant turns that are sampled `Choice` objects with `logprobs` are trained** (ART,
art-serverless.md §2.4); a plain `{{"role": "assistant", "content": ...}}` message is context
only. `/v1/chat/completions` returns such Choices when asked with `logprobs=true`, and captures
them for you when the request carries `metadata.trajectory_id`. A file with no trainable turn is
refused (400 `no_trainable_data`). A complete line (a group of two trajectories):

```json
{TRAINING_FILE_EXAMPLE_LINE}
```

The file object reports `group_count`, `trajectory_count` and `trainable_turns`; `dataset_id`
is the dataset holding the groups, and the file id is a job's `training_file`.
"""
