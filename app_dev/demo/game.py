"""A small prediction-market game played by simulated agents through the gateway.

Every decision is a real chat completion through `/v1/chat/completions` carrying
`metadata.trajectory_id`, so the gateway captures the sampled choice with its logprobs; the
market's outcome then gives each agent's trajectory its reward. Deterministic for a seed and
start hour (the window ids are part of the prompts).
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openai import OpenAI

SYSTEM_PROMPT = (
    "You are {name}, an autonomous trader in Babylon, a prediction-market game. {style} "
    "Answer with one action: BUY YES, BUY NO or HOLD, and a short reason."
)

PERSONAS = [
    ("Ada", "You follow momentum and act quickly."),
    ("Brutus", "You are a contrarian who fades the crowd."),
    ("Cleo", "You weigh the news carefully before acting."),
    ("Dario", "You are risk-averse and size positions small."),
    ("Esme", "You chase high-volatility markets."),
]

QUESTIONS = [
    "Will the TechCorp perp close above 120 by the end of the hour?",
    "Will the Central Bank announce a rate cut before the next tick?",
    "Will the BioGen trial report positive results this hour?",
    "Will the Orbital launch happen on schedule?",
]

_DECISION_WORDS = {"buy": "YES", "long": "YES", "yes": "YES", "sell": "NO", "short": "NO", "no": "NO"}


@dataclass
class PlayedTrajectory:
    trajectory_id: str
    agent_id: str
    window_id: str
    messages: list[dict[str, Any]]
    answer: str
    decision: str  # YES | NO | HOLD
    outcome: str  # YES | NO
    reward: float
    completion_model: str


@dataclass
class GameResult:
    trajectories: list[PlayedTrajectory] = field(default_factory=list)
    windows: list[str] = field(default_factory=list)


def decision_of(answer: str) -> str:
    """The first decision word in the model's answer; HOLD when there is none."""
    for word in re.findall(r"[a-z]+", answer.lower()):
        if word in _DECISION_WORDS:
            return _DECISION_WORDS[word]
        if word == "hold" or word == "wait":
            return "HOLD"
    return "HOLD"


def reward_of(decision: str, outcome: str, rng: random.Random) -> float:
    """+1 for the right side, −1 for the wrong one, 0 for holding; a little P&L noise on trades."""
    if decision == "HOLD":
        return 0.0
    base = 1.0 if decision == outcome else -1.0
    return round(base * (0.75 + 0.25 * rng.random()), 4)


def window_ids(count: int, start: dt.datetime) -> list[str]:
    start = start.replace(minute=0, second=0, microsecond=0)
    return [(start + dt.timedelta(hours=i)).strftime("%Y-%m-%dT%H:00") for i in range(count)]


def play(
    client: OpenAI,
    *,
    model: str,
    windows: int,
    agents: int,
    seed: int,
    start: dt.datetime,
    on_decision: Callable[[PlayedTrajectory], None] | None = None,
) -> GameResult:
    rng = random.Random(seed)
    result = GameResult(windows=window_ids(windows, start))
    personas = PERSONAS[:agents]
    for w, window in enumerate(result.windows):
        question = QUESTIONS[w % len(QUESTIONS)]
        outcome = rng.choice(["YES", "NO"])
        balance_noise = [rng.randint(-300, 300) for _ in personas]
        for a, (name, style) in enumerate(personas):
            agent_id = f"demo-agent-{name.lower()}"
            trajectory_id = f"demo-{seed}-{window}-{name.lower()}"
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": SYSTEM_PROMPT.format(name=name, style=style)},
                {
                    "role": "user",
                    "content": (
                        f"Window {window}. Market: {question}\n"
                        f"Balance: ${10_000 + balance_noise[a]}, open positions: {a % 3}. What do you do?"
                    ),
                },
            ]
            completion = client.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=24,
                temperature=0.7,
                metadata={"trajectory_id": trajectory_id, "agent_id": agent_id, "step": "0"},
            )
            answer = completion.choices[0].message.content or ""
            decision = decision_of(answer)
            played = PlayedTrajectory(
                trajectory_id=trajectory_id,
                agent_id=agent_id,
                window_id=window,
                messages=messages,
                answer=answer,
                decision=decision,
                outcome=outcome,
                reward=reward_of(decision, outcome, rng),
                completion_model=completion.model,
            )
            result.trajectories.append(played)
            if on_decision is not None:
                on_decision(played)
    return result
