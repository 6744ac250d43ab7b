"""Joining completions captured by the inference gateway onto trajectories.

The gateway stores each sampled completion (`captured_completions`: the request messages
and `choices[0]` with its logprobs) under the `metadata.trajectory_id` the caller sent: the
game's `"trajectoryId"`, or a pushed trajectory's id. Those Choices are the only assistant
turns ART can train, so a trajectory with captures is rebuilt from them, in step order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.gateway.models import CapturedCompletion
from app.trajectories.art_shape import ChoiceError, JsonDict, normalize_choice
from app.trajectories.context import ConversationBuilder

logger = logging.getLogger(__name__)

# SQLite allows 32766 bound parameters per statement; stay well below on both backends
LOOKUP_CHUNK = 2000


async def captured_trajectory_ids(session: AsyncSession) -> set[str]:
    """Every trajectory id that has at least one capture (about 100 bytes of memory per
    captured trajectory: the builder checks each game row against this set)."""
    result = await session.stream_scalars(sa.select(CapturedCompletion.trajectory_id).distinct())
    return {tid async for tid in result}


@dataclass
class CapturedConversation:
    messages_and_choices: list[Any]
    tools: list[Any] | None
    additional_histories: list[JsonDict]
    captures_used: int
    captures_invalid: int


async def captures_for(
    session: AsyncSession, trajectory_ids: Sequence[str]
) -> dict[str, list[CapturedCompletion]]:
    """The captures of these trajectories, each list in step order (unnumbered last), then time."""
    found: dict[str, list[CapturedCompletion]] = {}
    ids = sorted(set(trajectory_ids))
    for i in range(0, len(ids), LOOKUP_CHUNK):
        rows = await session.scalars(
            sa.select(CapturedCompletion)
            .where(CapturedCompletion.trajectory_id.in_(ids[i : i + LOOKUP_CHUNK]))
            .order_by(
                CapturedCompletion.trajectory_id,
                CapturedCompletion.step.asc().nulls_last(),
                CapturedCompletion.created_at,
                CapturedCompletion.id,
            )
        )
        for row in rows:
            found.setdefault(row.trajectory_id, []).append(row)
    return found


def conversation_from_captures(captures: Sequence[CapturedCompletion]) -> CapturedConversation:
    """messages_and_choices = the captured requests (repeated prefixes kept once) + each Choice;
    a request that does not continue an earlier conversation becomes an additional history."""
    builder = ConversationBuilder()
    used = invalid = 0
    for capture in captures:
        messages = capture.messages
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            invalid += 1
            continue
        try:
            choice = normalize_choice(capture.choice)
        except (ChoiceError, AttributeError, TypeError) as exc:
            logger.warning("captures.invalid_choice capture_id=%s error=%s", capture.id, exc)
            invalid += 1
            continue
        tools = capture.tools if isinstance(capture.tools, list) and capture.tools else None
        builder.add(messages, choice, tools)
        used += 1
    entries, tools, histories = builder.build()
    return CapturedConversation(entries, tools, histories, used, invalid)
