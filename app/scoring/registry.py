"""Heuristic scorers: named, versioned, selectable per dataset, pluggable.

A scorer turns one game trajectory's parsed steps into a reward in [0, 1] with its
components, in two calls: `observe(steps, ctx)` on every row (the builder's hot path: return
small features, e.g. a tuple of counts) and `combine(observations, ctx)` → `ScoreResult`,
called only for the trajectories that need a full result. Two kinds:
- per trajectory (`per_agent = False`): `combine` gets one trajectory's observation;
- per agent within a window (`per_agent = True`, like the game's `score_locally`): `combine`
  gets all of one agent's observations in the window, and every trajectory of that agent
  receives the score.

A scorer that cannot use a trajectory (a missing or non-numeric field it needs) raises
`ScoreRejected(reason, detail)`: the row is counted under that reason, the build goes on.

Register a plain function as a per-trajectory scorer:

    @scorer("my_heuristic", version="1", description="…")
    def my_heuristic(steps, ctx):
        return ScoreResult(score=…, components={…})
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from app.errors import BadRequest


@dataclass
class WindowContext:
    """What a scorer may know about the window a trajectory belongs to."""

    window_id: str | None
    # What the game knows of how the window turned out, in the game's own shape (Babylon: its
    # resolved markets, app/babylon/scorers.py MarketOutcomes), read only for scorers with
    # `needs_market_outcomes`. None when the trajectory has no window (plugin rows) or the
    # scorer did not ask for them.
    outcomes: Any = None


@dataclass(slots=True)
class ScoreResult:
    score: float
    components: dict[str, float] = field(default_factory=dict)
    reasoning: str | None = None


class ScoreRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


@runtime_checkable
class Scorer(Protocol):
    name: str
    version: str
    description: str
    per_agent: bool
    needs_market_outcomes: bool

    def observe(self, steps: list[dict[str, Any]], ctx: WindowContext) -> Any:
        """Features of one trajectory (cheap: runs on every row)."""
        ...

    def combine(self, observations: Sequence[Any], ctx: WindowContext) -> ScoreResult:
        """One trajectory's observation (or, per_agent, one agent's in a window) → the score."""
        ...


class TrajectoryScorer:
    """Base for per-trajectory scorers: implement `observe` and `result`."""

    name: str
    version: str
    description: str = ""
    per_agent: bool = False
    needs_market_outcomes: bool = False

    def observe(self, steps: list[dict[str, Any]], ctx: WindowContext) -> Any:
        raise NotImplementedError

    def result(self, observation: Any, ctx: WindowContext) -> ScoreResult:
        if not isinstance(observation, ScoreResult):
            raise TypeError(f"{type(self).__name__}.observe returned features: implement result()")
        return observation

    def combine(self, observations: Sequence[Any], ctx: WindowContext) -> ScoreResult:
        if len(observations) != 1:
            raise TypeError("a per-trajectory scorer combines exactly one observation")
        return self.result(observations[0], ctx)


ScoreFunction = Callable[[list[dict[str, Any]], WindowContext], "ScoreResult | float"]


class _FunctionScorer(TrajectoryScorer):
    def __init__(
        self, fn: ScoreFunction, name: str, version: str, description: str, needs_market_outcomes: bool
    ) -> None:
        self._fn = fn
        self.name = name
        self.version = version
        self.description = description
        self.needs_market_outcomes = needs_market_outcomes

    def observe(self, steps: list[dict[str, Any]], ctx: WindowContext) -> ScoreResult:
        result = self._fn(steps, ctx)
        if isinstance(result, ScoreResult):
            return result
        return ScoreResult(score=float(result))


_REGISTRY: dict[str, dict[str, Scorer]] = {}


def _version_key(version: str) -> tuple[tuple[int, str], ...]:
    return tuple((int(p), "") if p.isdigit() else (0, p) for p in version.split("."))


def register_scorer(instance: Scorer, *, replace: bool = False) -> Scorer:
    """Make a scorer selectable by name (its newest version is the default)."""
    versions = _REGISTRY.setdefault(instance.name, {})
    if instance.version in versions and not replace:
        raise ValueError(f"scorer {instance.name} version {instance.version} is already registered")
    versions[instance.version] = instance
    return instance


def scorer(
    name: str, *, version: str = "1", description: str = "", needs_market_outcomes: bool = False
) -> Callable[[ScoreFunction], ScoreFunction]:
    """Decorator registering a function `(steps, ctx) -> ScoreResult | float` as a scorer."""

    def decorate(fn: ScoreFunction) -> ScoreFunction:
        register_scorer(
            _FunctionScorer(
                fn, name, version, description or (fn.__doc__ or "").strip(), needs_market_outcomes
            )
        )
        return fn

    return decorate


def unregister_scorer(name: str, version: str | None = None) -> None:
    if version is None:
        _REGISTRY.pop(name, None)
    else:
        _REGISTRY.get(name, {}).pop(version, None)


def get_scorer(name: str, version: str | None = None) -> Scorer:
    """The scorer, or BadRequest (param `scorer`) naming the available ones."""
    versions = _REGISTRY.get(name)
    if not versions:
        raise BadRequest(
            f"unknown scorer {name!r}; available: {', '.join(sorted(_REGISTRY)) or 'none'}",
            param="scorer",
            code="unknown_scorer",
        )
    if version is None:
        return versions[max(versions, key=_version_key)]
    if version not in versions:
        raise BadRequest(
            f"scorer {name!r} has no version {version!r}; available: {', '.join(sorted(versions, key=_version_key))}",
            param="scorer_version",
            code="unknown_scorer_version",
        )
    return versions[version]


def list_scorers() -> list[Scorer]:
    return [
        s
        for name in sorted(_REGISTRY)
        for _, s in sorted(_REGISTRY[name].items(), key=lambda kv: _version_key(kv[0]))
    ]
