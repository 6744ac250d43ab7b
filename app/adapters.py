"""A game adapter: everything one game brings, registered with the core in one call.

The core defines what it consumes and holds the registries: trajectory sources
(app/datasets/sources.py), scorers (app/scoring/registry.py) and job hand-offs
(app/jobs/handoff.py). An adapter bundles its implementations, and the composition root
(app/main.py for the API, app/cli.py for the standalone worker) installs it. The core imports
no adapter; an adapter imports the core.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fastapi import APIRouter

from app.datasets.sources import TrajectorySource, register_source, unregister_source
from app.jobs.handoff import Handoff, register_handoff, unregister_handoff
from app.scoring.registry import Scorer, register_scorer, unregister_scorer


@dataclass(frozen=True)
class GameAdapter:
    name: str
    source: TrajectorySource | None = None  # what POST /v1/datasets {"source": name} builds from
    default_source: bool = False  # the source POST /v1/datasets uses when none is named
    scorers: Sequence[Scorer] = ()
    handoff: Handoff | None = None  # what finished jobs on the game's data are handed to
    routers: Sequence[APIRouter] = field(default=())  # the game's own routes (behind the API key)


def install(adapter: GameAdapter) -> None:
    """Register the adapter's parts (installing the same adapter twice changes nothing)."""
    if adapter.source is not None:
        register_source(adapter.source, default=adapter.default_source)
    for scorer in adapter.scorers:
        register_scorer(scorer, replace=True)
    if adapter.handoff is not None:
        register_handoff(adapter.handoff)


def uninstall(adapter: GameAdapter) -> None:
    if adapter.source is not None:
        unregister_source(adapter.source.name)
    for scorer in adapter.scorers:
        unregister_scorer(scorer.name, scorer.version)
    if adapter.handoff is not None:
        unregister_handoff(adapter.handoff.name)
