"""Stored trajectories become ART objects with real `Choice`s again (art-serverless.md §7.6)."""

from __future__ import annotations

from openai.types.chat.chat_completion import Choice

from app.training.groups import reward_metrics, trajectory_groups
from app.training.remote import GroupPayload
from tests.fixtures.factories import choice, trajectory


def test_stored_choices_are_rebuilt_as_choice_objects_and_plain_messages_stay_dicts() -> None:
    stored = trajectory(0.5, "2025-11-14T00:00")
    stored["messages_and_choices"].append({"role": "user", "content": "and now?"})
    stored["messages_and_choices"].append(choice("SELL NO"))
    stored["additional_histories"] = [
        {"messages_and_choices": [{"role": "user", "content": "x"}, choice("HOLD")]}
    ]
    broken = {"message": {"role": "assistant", "content": "no finish_reason"}}  # not a valid Choice
    stored["messages_and_choices"].append(broken)
    (group,) = trajectory_groups([GroupPayload(scenario_id="w", trajectories=[stored])])
    (traj,) = group.trajectories
    kinds = [type(m).__name__ for m in traj.messages_and_choices]
    assert kinds == ["dict", "dict", "Choice", "dict", "Choice", "dict"]
    assert isinstance(traj.messages_and_choices[2], Choice)
    assert traj.messages_and_choices[2].logprobs is not None
    assert isinstance(traj.additional_histories[0].messages_and_choices[1], Choice)
    assert traj.messages_and_choices[-1] == broken  # kept as context, as stored
    assert traj.reward == 0.5
    assert group.metadata == {"scenario_id": "w"}
    # what goes over the wire carries the stored text and logprobs (plus the Choice's null fields)
    wire = traj.messages_and_choices[2].model_dump(mode="json")
    assert wire["message"]["content"] == stored["messages_and_choices"][2]["message"]["content"]
    assert wire["logprobs"] == stored["messages_and_choices"][2]["logprobs"]


def test_reward_metrics_summarise_a_step() -> None:
    metrics = reward_metrics([([0.0, 1.0], 2), ([0.5, 0.5], 1)])
    assert metrics == {
        "num_groups": 2.0,
        "num_trajectories": 4.0,
        "trainable_turns": 3.0,
        "reward_mean": 0.5,
        "reward_std": 0.3535533905932738,
    }
