"""What a key may do: its scopes, the models it may call, its limits. A leaf module (no I/O).

Scopes (a key holds any of them; keys in API_KEYS hold all three unless AUTH__API_KEYS_SCOPES
says otherwise):

| scope | routes |
| --- | --- |
| `inference` | `POST /v1/chat/completions`, `GET /v1/models`, `GET /v1/models/{id}` |
| `training` | `/train`, files (upload, list, read), datasets, trajectories, scores, scorers, fine-tuning jobs (cancel included) |
| `admin` | keys, aliases, rollouts, deletes, `/metrics`, the usage of every key |

Each route declares exactly one scope (`app/auth.require_scope`); the scope matrix test
(tests/test_scopes.py) fails for a route that declares none.

Model patterns are shell globs (`fnmatch`, case-sensitive: `*`, `?`, `[...]`) matched against
the *resolved* model, never the raw requested string, so that every name of the same model
(an alias, `:step<N>`, a checkpoint id, a job id, ART's `wandb-artifact:///…` name) gets the
same answer and no name of another model slips through. The names a pattern is matched
against (`ModelAccess.subjects`):

- a base model: its name (`OpenPipe/Qwen3-14B-Instruct`);
- a checkpoint of a model line `L`: `L` and `L:step<N>`, plus `L:<alias>` when it was asked
  for by that alias (`L:production`).

So `babylon-agent:*` and `babylon-agent` allow every checkpoint of that line by any of its
names; `babylon-agent*` also allows `babylon-agent-v2`; `babylon-agent:production` allows
only what that alias points at, asked for by the alias.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class Scope(StrEnum):
    inference = "inference"
    training = "training"
    admin = "admin"


ALL_SCOPES: frozenset[Scope] = frozenset(Scope)

MAX_PATTERN_LENGTH = 200


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    """Scope names → scopes; ValueError naming an unknown one."""
    scopes = set()
    for value in values:
        name = value.strip().lower()
        if not name:
            continue
        try:
            scopes.add(Scope(name))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise ValueError(f"unknown scope {value!r}; the scopes are {known}") from None
    return frozenset(scopes)


def encode_scopes(scopes: Iterable[Scope]) -> str:
    """The stored form: sorted names joined by commas."""
    return ",".join(sorted(s.value for s in scopes))


def decode_scopes(stored: str) -> frozenset[Scope]:
    # Unknown names (a scope a newer version wrote, then rolled back) grant nothing.
    return frozenset(Scope(s) for s in stored.split(",") if s in Scope.__members__)


def check_pattern(pattern: str) -> str:
    pattern = pattern.strip()
    if not pattern or len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"a model pattern must be 1 to {MAX_PATTERN_LENGTH} characters, got {pattern!r}")
    return pattern


@dataclass(frozen=True, slots=True)
class ModelAccess:
    """The models a key may call: None = every model, else globs compiled to one regex."""

    patterns: tuple[str, ...] | None = None
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, patterns: Iterable[str] | None) -> ModelAccess:
        if patterns is None:
            return cls()
        kept = tuple(check_pattern(p) for p in patterns)
        # fnmatch.translate anchors each glob (\Z); one alternation is one regex call per name.
        regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in kept)) if kept else None
        return cls(kept, regex)

    @property
    def unrestricted(self) -> bool:
        return self.patterns is None

    def allows(self, subjects: Iterable[str]) -> bool:
        if self.patterns is None:
            return True
        regex = self._regex
        if regex is None:  # an empty list: no model at all
            return False
        return any(regex.match(subject) is not None for subject in subjects)


def subjects(
    *, requested: str, model_name: str | None, step: int | None, base_model: str | None
) -> tuple[str, ...]:
    """The names a model pattern is matched against for one resolved request (module docstring).

    `model_name` is the model line's name (None for a base model, whose name is `requested`'s
    resolution `base_model` or the requested name itself)."""
    if model_name is None:
        return (base_model or requested,)
    names = [model_name]
    if step is not None:
        names.append(f"{model_name}:step{step}")
    prefix = model_name + ":"
    if requested.startswith(prefix) and requested != prefix:
        names.append(requested)
    return tuple(names)
