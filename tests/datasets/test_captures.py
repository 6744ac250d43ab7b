"""Captured completions (what the gateway stores) turn game trajectories into trainable ones."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from openai.types.chat.chat_completion import Choice

from app.gateway.models import CapturedCompletion
from app.state import app_state
from tests.fixtures.game import GameDB, social_step, trade_step
from tests.fixtures.pipeline import Pipeline

_n = itertools.count()
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def choice(text: str, *, logprobs: bool = True, finish: str = "stop") -> dict[str, Any]:
    """`choices[0]` as a vLLM-backed upstream returns it with logprobs requested."""
    return {
        "index": 0,
        "finish_reason": finish,
        "message": {"role": "assistant", "content": text},
        "logprobs": {
            "content": [{"token": "token_id:11", "bytes": [72], "logprob": -0.25, "top_logprobs": []}]
            if logprobs
            else [],
            "refusal": None,
        },
    }


async def capture(
    p: Pipeline,
    trajectory_id: str,
    messages: list[dict[str, Any]],
    reply: dict[str, Any],
    *,
    step: int | None,
    tools: list[dict[str, Any]] | None = None,
) -> None:
    """A row exactly as the gateway writes it (app/gateway/models.py)."""
    n = next(_n)
    async with app_state(p.app).sessionmaker() as session:
        session.add(
            CapturedCompletion(
                id=f"cap-{n}",
                trajectory_id=trajectory_id,
                agent_id=None,
                step=step,
                model="babylon-agent",
                upstream_model="wandb-artifact:///e/p/babylon-agent:step3",
                messages=messages,
                tools=tools,
                choice=reply,
                usage={"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
                latency_ms=12.0,
                created_at=T0 + dt.timedelta(seconds=n),
            )
        )
        await session.commit()


SYS = {"role": "system", "content": "You are agent a."}
U1 = {"role": "user", "content": "Markets: m1 at 40%. Trade?"}
U2 = {"role": "user", "content": "Your trade filled. Post about it?"}
SYS2 = {"role": "system", "content": "You write short comments."}
U3 = {"role": "user", "content": "Comment on the feed."}


async def _window(game: GameDB) -> dict[str, str]:
    ids = {
        "a_long": await game.add_trajectory("a", [trade_step(0, reward=0.1), social_step(1), social_step(2)]),
        "a_captured": await game.add_trajectory("a", [trade_step(0, reward=0.5)]),
        "b": await game.add_trajectory("b", [trade_step(0, reward=0.0, success=False)]),
        "c": await game.add_trajectory("c", [social_step(0, success=False, reward=0)]),
    }
    return ids


async def test_captured_completions_become_trainable_choices_in_step_order(
    pipeline: Pipeline, game: GameDB
) -> None:
    ids = await _window(game)
    tid = ids["a_captured"]
    c1, c2, c3 = choice("BUY YES m1"), choice("Posted: bought m1"), choice("Nice one")
    tools = [{"type": "function", "function": {"name": "trade", "parameters": {"type": "object"}}}]
    # captured out of order: the join orders by step, unnumbered last
    await capture(pipeline, tid, [SYS2, U3], c3, step=None)
    await capture(
        pipeline, tid, [SYS, U1, {"role": "assistant", "content": "BUY YES m1"}, U2], c2, step=1, tools=tools
    )
    await capture(pipeline, tid, [SYS, U1], c1, step=0, tools=tools)
    await capture(pipeline, tid, [SYS, U1], choice("x", finish="weird"), step=2)  # the gateway stored junk
    ds = await pipeline.build()
    assert ds["trainable_turns"] == 3
    stats = ds["stats"]
    assert stats["trainable_turns"] == 3
    assert stats["trajectories"] == {"with_trainable_turns": 1, "context_only": 2}
    assert stats["context_sources"] == {"captures": 1, "environment": 2}
    assert stats["captures_invalid"] == 1
    (group,) = await pipeline.groups(ds["id"])
    assert group["trainable_turns"] == 3
    by_id = {t["metadata"]["trajectory_id"]: t for t in group["trajectories"]}
    # agent a is represented by its captured trajectory, though another one has more steps
    assert tid in by_id
    assert ids["a_long"] not in by_id
    traj = by_id[tid]
    as_art = [Choice.model_validate(c).model_dump(mode="json") for c in (c1, c2, c3)]
    # the repeated prefix (system, user, the first answer) is kept once
    assert traj["messages_and_choices"] == [SYS, U1, as_art[0], U2, as_art[1]]
    assert traj["tools"] == tools
    # a request that starts afresh is an additional history, trained with the same advantage
    assert traj["additional_histories"] == [{"messages_and_choices": [SYS2, U3, as_art[2]], "tools": None}]
    assert traj["metadata"]["context"] == "captures"
    # the others are context only (plain assistant messages from the environment and action)
    for other in (by_id[ids["b"]], by_id[ids["c"]]):
        assert all("logprobs" not in m for m in other["messages_and_choices"])
    assert stats["context_only_turns"] == 2


async def test_choices_without_logprobs_are_context_not_trainable_turns(
    pipeline: Pipeline, game: GameDB
) -> None:
    ids = await _window(game)
    await capture(pipeline, ids["a_captured"], [SYS, U1], choice("HOLD", logprobs=False), step=0)
    ds = await pipeline.build()
    assert ds["trainable_turns"] == 0
    assert ds["stats"]["context_only_turns"] == 3  # the Choice without logprobs + b's and c's actions


async def test_logged_prompts_give_context_when_nothing_was_captured(
    pipeline: Pipeline, game: GameDB
) -> None:
    llm_step = trade_step(
        0, reward=0.2, llm_calls=[{"systemPrompt": "S", "userPrompt": "U", "response": "R"}]
    )
    in_steps = await game.add_trajectory("a", [llm_step])
    in_logs = await game.add_trajectory("b", [trade_step(0, reward=0.4)])
    await game.add_llm_log(in_logs, 0, "Log system", "Log user", "Log reply")
    plain = await game.add_trajectory("c", [trade_step(0, reward=0.0, success=False)])
    ds = await pipeline.build()
    (group,) = await pipeline.groups(ds["id"])
    by_id = {t["metadata"]["trajectory_id"]: t for t in group["trajectories"]}
    assert by_id[in_steps]["messages_and_choices"] == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "R"},
    ]
    assert by_id[in_logs]["metadata"]["context"] == "llm_call_logs"
    assert by_id[in_logs]["messages_and_choices"][-1] == {"role": "assistant", "content": "Log reply"}
    env = by_id[plain]["messages_and_choices"]
    assert env[0]["role"] == "system"
    assert env[1] == {"role": "user", "content": "Balance: $1000, P&L: $0, Positions: 0"}
    assert env[2]["content"].startswith("TRADING_DECISION {")
    assert ds["stats"]["context_sources"] == {"environment": 1, "llm_call_logs": 1, "llm_calls": 1}
    assert ds["trainable_turns"] == 0
    assert ds["stats"]["context_only_turns"] == 3


@pytest.mark.filterwarnings("ignore")
async def test_stored_trajectories_are_what_art_itself_dumps(pipeline: Pipeline, game: GameDB) -> None:
    ids = await _window(game)
    await capture(pipeline, ids["a_captured"], [SYS, U1], choice("BUY YES m1"), step=0)
    await capture(pipeline, ids["a_captured"], [SYS2, U3], choice("ok"), step=1)
    ds = await pipeline.build()
    (group,) = await pipeline.groups(ds["id"])
    import art
    from art.trajectories import History

    def entries(items: list[Any]) -> list[Any]:
        return [Choice.model_validate(e) if "message" in e else e for e in items]

    for stored in group["trajectories"]:
        rebuilt = art.Trajectory(
            messages_and_choices=entries(stored["messages_and_choices"]),
            tools=stored["tools"],
            additional_histories=[
                History(messages_and_choices=entries(h["messages_and_choices"]), tools=h["tools"])
                for h in stored["additional_histories"]
            ],
            reward=stored["reward"],
            metrics=stored["metrics"],
            metadata=stored["metadata"],
        )
        assert rebuilt.model_dump(mode="json") == stored
