"""Knobs of the emulator: how fast jobs progress, how answers are shaped, which keys and models it accepts."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

# W&B Serverless RL's published base models (art-serverless.md §6.3).
DEFAULT_BASE_MODELS: tuple[str, ...] = (
    "OpenPipe/Qwen3-14B-Instruct",
    "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "Qwen/Qwen3.6-27B",
    "meta-llama/Llama-3.1-8B-Instruct",
)

DEFAULT_ENTITY = "emulator-entity"


@dataclass(frozen=True)
class EmulatorConfig:
    """Immutable settings; `EmulatorState.configure(**changes)` swaps in a modified copy.

    pace_s: seconds between two consecutive events of a training job (0 = all events at once).
    gradient_steps: `gradient_step` events per job (ART's `num_sequences`).
    api_key: when set, the only Bearer key accepted; otherwise any non-empty key is.
    stream_chunks: content pieces a streamed chat completion is split into.
    completion_tokens: tokens in a generated answer unless `max_tokens` asks for fewer.
    skills: (model-name suffix, p) pairs: a text answer of a served model whose name ends with
        the suffix starts with "win" with probability p (drawn from the model and messages, so
        deterministic), else "lose" — a game whose reward depends on the checkpoint that served
        (`configure(skills={":step2": 0.8, ":step1": 0.5})`; the rollout tests use it).
    """

    pace_s: float = 0.0
    gradient_steps: int = 2
    api_key: str | None = None
    default_entity: str = DEFAULT_ENTITY
    base_models: tuple[str, ...] = DEFAULT_BASE_MODELS
    stream_chunks: int = 4
    stream_delay_s: float = 0.0
    completion_tokens: int = 12
    skills: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.pace_s < 0:
            raise ValueError("pace_s must be >= 0")
        if self.gradient_steps < 1:
            raise ValueError("gradient_steps must be >= 1")
        if self.stream_chunks < 1:
            raise ValueError("stream_chunks must be >= 1")
        if self.stream_delay_s < 0:
            raise ValueError("stream_delay_s must be >= 0")
        if self.completion_tokens < 1:
            raise ValueError("completion_tokens must be >= 1")
        if not self.default_entity:
            raise ValueError("default_entity must not be empty")
        if any(not 0.0 <= p <= 1.0 for _, p in self.skills):
            raise ValueError("skills: each probability must be in [0, 1]")

    def skill(self, model: str) -> float | None:
        """The win probability of `model` (the longest matching suffix), None without one."""
        matches = [(len(suffix), p) for suffix, p in self.skills if model.endswith(suffix)]
        return max(matches)[1] if matches else None

    def with_changes(self, **changes: Any) -> EmulatorConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown emulator setting(s): {', '.join(unknown)}")
        if "base_models" in changes:
            changes["base_models"] = tuple(changes["base_models"])
        if "skills" in changes:
            skills = changes["skills"]
            pairs = skills.items() if isinstance(skills, dict) else skills
            changes["skills"] = tuple((str(k), float(v)) for k, v in pairs)
        return replace(self, **changes)

    def public(self) -> dict[str, Any]:
        """The settings as JSON, without the key itself."""
        return {
            "pace_s": self.pace_s,
            "gradient_steps": self.gradient_steps,
            "api_key_required": self.api_key is not None,
            "default_entity": self.default_entity,
            "base_models": list(self.base_models),
            "stream_chunks": self.stream_chunks,
            "stream_delay_s": self.stream_delay_s,
            "completion_tokens": self.completion_tokens,
            "skills": dict(self.skills),
        }


__all__ = ["DEFAULT_BASE_MODELS", "DEFAULT_ENTITY", "EmulatorConfig"]
