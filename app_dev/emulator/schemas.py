"""Request bodies as the W&B Training API validates them (its OpenAPI schemas, art-serverless.md §4.5).

FastAPI turns a mismatch into the 422 `{"detail": [{"loc", "msg", "type"}]}` that the real API
returns. Unknown fields are tolerated, as on the real server.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelCreate(_Lenient):
    entity: str | None = None
    project: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    base_model: Annotated[str, Field(min_length=1)]
    return_existing: bool = False


class CheckpointDelete(_Lenient):
    steps: list[StrictInt]


class ChoiceMessage(_Lenient):
    role: Literal["assistant"]
    content: str | None = None


class ChoiceEntry(_Lenient):
    """An openai `Choice` as ART dumps it; the trainable kind of entry."""

    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
    index: int
    message: ChoiceMessage
    logprobs: dict[str, Any] | None = None


def _entry_kind(value: Any) -> str:
    # ART never validates dict entries; anything with a "message" key is meant as a Choice.
    if isinstance(value, dict) and "message" in value:
        return "choice"
    if isinstance(value, BaseModel):
        return "choice" if isinstance(value, ChoiceEntry) else "message"
    return "message"


Entry = Annotated[
    Annotated[ChoiceEntry, Tag("choice")] | Annotated[dict[str, Any], Tag("message")],
    Discriminator(_entry_kind),
]

MetricValue = StrictFloat | StrictInt | StrictBool
MetadataValue = StrictFloat | StrictInt | StrictStr | StrictBool | None


class History(_Lenient):
    messages_and_choices: list[Entry] = []
    tools: list[dict[str, Any]] | None = None


class Trajectory(_Lenient):
    messages_and_choices: list[Entry] = []
    tools: list[dict[str, Any]] | None = None
    additional_histories: list[History] = []
    reward: float
    metrics: dict[str, MetricValue] = {}
    metadata: dict[str, MetadataValue] = {}


class TrajectoryGroup(_Lenient):
    trajectories: list[Trajectory]


class TrainingJobCreate(_Lenient):
    model_id: Annotated[str, Field(min_length=1)]
    trajectory_groups: Annotated[list[TrajectoryGroup], Field(min_length=1)]
    experimental_config: dict[str, Any] | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Any = None


class ChatCompletionCreate(_Lenient):
    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1, le=8)] = 1
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
