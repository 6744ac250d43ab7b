"""Where a dataset's trajectories come from: the interface a game adapter implements.

A `TrajectorySource` is named by `POST /v1/datasets {"source": …}`. It validates the request
against the server's configuration when the dataset is created (`prepare`), then builds it
(`build`: stream → score → group → `SnapshotWriter`), and says what a failure means
(`describe_error`). The generic source, trajectories pushed to `POST /v1/trajectories`
(`pushed`), is registered here; a game adapter registers its own (app/babylon registers
`babylon`) from the composition root, never the other way round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.datasets.snapshot import SnapshotWriter
from app.datasets.stats import BuildStats
from app.errors import StoredError

if TYPE_CHECKING:  # the request schema validates `source` against this registry
    from app.datasets.schemas import DatasetCreate

PUSHED = "pushed"
FILE = "file"  # datasets made by an upload (/v1/files, app/files/source.py); not one to request


class DatasetBuild(Protocol):
    """One run of a source over a queued dataset."""

    stats: BuildStats
    writer: SnapshotWriter

    async def run(self) -> BuildStats:
        """Write every group through `writer` and return the build's statistics."""
        ...


class TrajectorySource(Protocol):
    name: str
    default_scorer: str | None  # `params.scorer` when the request names none

    def check_params(self, params: DatasetCreate) -> None:
        """Raise ValueError (a 422 naming the problem) for a selection this source cannot read."""
        ...

    def prepare(self, settings: Settings, params: DatasetCreate) -> dict[str, Any]:
        """At creation: raise BadRequest when the source is not configured; return the
        parameters to store beyond the request's (e.g. the scorer version pinned)."""
        ...

    def build(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        dataset_id: str,
        params: DatasetCreate,
        stored: dict[str, Any],
    ) -> DatasetBuild: ...

    def describe_error(self, exc: BaseException, settings: Settings) -> StoredError | None:
        """The stored error for a failure this source knows (None: a generic `build_failed`).
        Must not leak secrets (e.g. a database password in a driver's message)."""
        ...


_SOURCES: dict[str, TrajectorySource] = {}
_DEFAULT: list[str] = []  # the game adapters' sources, newest last: the default is the last


def register_source(source: TrajectorySource, *, default: bool = False) -> TrajectorySource:
    """Make `source` buildable by name (registering the same object again changes nothing)."""
    existing = _registry().get(source.name)
    if existing is not None and existing is not source:
        raise ValueError(f"a trajectory source named {source.name!r} is already registered")
    _SOURCES[source.name] = source
    if default and source.name not in _DEFAULT:
        _DEFAULT.append(source.name)
    return source


def unregister_source(name: str) -> None:
    _SOURCES.pop(name, None)
    if name in _DEFAULT:
        _DEFAULT.remove(name)


def _registry() -> dict[str, TrajectorySource]:
    if PUSHED not in _SOURCES:
        # the generic source, registered on first use: its module needs the request schemas,
        # which validate against this registry
        from app.datasets.pushed_build import PushedSource

        _SOURCES[PUSHED] = PushedSource()
    return _SOURCES


def get_source(name: str) -> TrajectorySource:
    source = _registry().get(name)
    if source is None:
        raise ValueError(f"unknown source {name!r}; available: {', '.join(source_names())}")
    return source


def source_names() -> list[str]:
    """The sources `POST /v1/datasets` can name (uploaded files are built from their upload)."""
    return sorted(name for name in _registry() if name != FILE)


def default_source() -> str:
    """What `POST /v1/datasets` builds from without a `source`: the game's, else pushed."""
    return _DEFAULT[-1] if _DEFAULT else PUSHED
