"""Is the database's schema the one this code needs? Checked before anything starts, while the
service runs, and when a query fails on a missing table.

A process that cannot work refuses in one line that says why and what to do: `serve`,
`worker` and the app's lifespan raise `SchemaNotAtHead` (with `MIGRATE_ON_START=false`); a
running service answers `/health` 503 with the same sentence, API calls answer 503 in the error
envelope instead of an opaque 500, and the worker pauses (one log line) until the schema is
back at head.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from fastapi import FastAPI, Request
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response

from app.config import ConfigError
from app.db import is_unavailable
from app.errors import ServiceUnavailable, error_response
from app.migrations import alembic_config, head_revisions
from app.state import app_state

logger = logging.getLogger(__name__)

MIGRATE_COMMAND = "training-control migrate"


@dataclass(frozen=True)
class SchemaState:
    current: frozenset[str]
    heads: frozenset[str]

    @property
    def at_head(self) -> bool:
        return self.current == self.heads

    @property
    def newer_than_code(self) -> bool:
        """The database carries a revision this code does not know (a newer version migrated it)."""
        return bool(self.current - _known_revisions())

    def describe(self) -> str:
        """One sentence: where the schema is, where it should be, and the command to run."""
        head = _names(self.heads)
        if not self.current:
            return (
                f"the database has no schema (no migration applied; head is {head}): run `{MIGRATE_COMMAND}`"
            )
        if self.newer_than_code:
            return (
                f"the database schema is at {_names(self.current)}, which this version of training-control "
                f"does not know (its head is {head}): run the newer version, or restore a matching database"
            )
        return (
            f"the database schema is at {_names(self.current)} but this version needs {head}: "
            f"run `{MIGRATE_COMMAND}`"
        )


def _names(revisions: frozenset[str]) -> str:
    return ", ".join(sorted(revisions)) or "none"


_known: frozenset[str] | None = None


def _known_revisions() -> frozenset[str]:
    global _known
    if _known is None:
        script = ScriptDirectory.from_config(alembic_config("sqlite://"))
        _known = frozenset(rev.revision for rev in script.walk_revisions())
    return _known


class SchemaNotAtHead(ConfigError):
    """The schema is not the one this code needs; the message says what to run."""

    def __init__(self, state: SchemaState) -> None:
        super().__init__(state.describe())
        self.state = state


def _current_revisions(connection: sa.Connection) -> frozenset[str]:
    # Read directly rather than through Alembic's MigrationContext, which logs two INFO lines
    # per call: this runs at every start, every /health and every worker schema check.
    if not sa.inspect(connection).has_table("alembic_version"):
        return frozenset()
    return frozenset(connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())


async def read_schema_state(engine: AsyncEngine) -> SchemaState:
    async with engine.connect() as conn:
        current = await conn.run_sync(_current_revisions)
    return SchemaState(current=current, heads=head_revisions())


async def require_schema_at_head(engine: AsyncEngine, *, wait_s: float = 0.0) -> SchemaState:
    """Raise SchemaNotAtHead unless the database's schema is at head. An unreachable database
    is retried for up to `wait_s` (DB__START_WAIT_S): a process restarted while the database
    is down (or restarting) waits for it instead of exiting at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay = 0.2
    while True:
        try:
            state = await read_schema_state(engine)
            break
        except Exception as exc:
            if not is_unavailable(exc) or loop.time() + delay > deadline:
                raise
            logger.warning("schema.waiting_for_database error=%s", str(exc).splitlines()[0][:200])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    if not state.at_head:
        raise SchemaNotAtHead(state)
    return state


# -- API calls on a database whose tables are gone -----------------------------------------------

# Postgres SQLSTATEs 42P01 undefined_table / 42703 undefined_column; SQLite says it in words.
_MISSING_SCHEMA_SQLSTATES = {"42P01", "42703"}
_MISSING_SCHEMA_SQLITE = ("no such table", "no such column", "has no column named")


def is_missing_schema_error(exc: BaseException) -> bool:
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _MISSING_SCHEMA_SQLSTATES:
        return True
    return any(marker in str(orig) for marker in _MISSING_SCHEMA_SQLITE)


def install_schema_error_handler(app: FastAPI) -> None:
    """API calls that fail on a missing table or column answer 503 naming the migration to run.

    Wraps the app's handlers for OperationalError and ProgrammingError: any other database
    error goes to the handler that was there before (or, for ProgrammingError, on to the
    last-resort 500), so the behaviour of every other failure is unchanged.
    """
    previous: dict[type[Exception], Callable[..., object]] = {}
    for exc_class in (OperationalError, ProgrammingError):
        handler = app.exception_handlers.get(exc_class)
        if handler is not None:
            previous[exc_class] = handler

    async def handle(request: Request, exc: Exception) -> Response:
        if is_missing_schema_error(exc):
            engine: AsyncEngine | None = app_state(request.app).engine_or_none
            state = None
            if engine is not None:
                with contextlib.suppress(Exception):
                    state = await _state_beside_the_failed_request(engine)
            if state is None or not state.at_head:
                message = (
                    state.describe()
                    if state is not None
                    else f"the database schema is missing tables: run `{MIGRATE_COMMAND}`"
                )
                logger.warning("schema.not_at_head path=%s reason=%s", request.url.path, message)
                return error_response(ServiceUnavailable(message, code="schema_not_at_head"))
        fallback = previous.get(type(exc)) or next(
            (h for cls, h in previous.items() if isinstance(exc, cls)), None
        )
        if fallback is None:
            raise exc
        response = fallback(request, exc)
        if asyncio.iscoroutine(response):
            response = await response
        assert isinstance(response, Response)
        return response

    app.add_exception_handler(OperationalError, handle)
    app.add_exception_handler(ProgrammingError, handle)


async def _state_beside_the_failed_request(engine: AsyncEngine) -> SchemaState:
    """The schema state, read while the failed request's session may still be open.

    On SQLite that session holds the write lock (every transaction begins IMMEDIATE, app/db.py),
    so a second engine connection would wait for it; a plain read-only sqlite3 connection reads
    alongside it (WAL readers take no lock)."""
    path = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return await read_schema_state(engine)

    def read() -> frozenset[str]:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)) as conn:
            if conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'"
            ).fetchone():
                return frozenset(row[0] for row in conn.execute("SELECT version_num FROM alembic_version"))
            return frozenset()

    return SchemaState(current=await asyncio.to_thread(read), heads=head_revisions())


# -- the worker pauses while the schema is behind -------------------------------------------------


class Service(Protocol):
    """What `WhileSchemaAtHead` runs: the job worker (app/worker/loop.py) has this shape."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def wake(self) -> None: ...


class WhileSchemaAtHead:
    """Runs a service made by `factory` only while the database schema is at head.

    Checks the schema every `interval_s`; when it falls behind (a restored backup, a database
    recreated under a running process) the service is stopped gracefully and one line says
    why and what to run, instead of a traceback per poll; when the schema is back at head a
    new service is started.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        factory: Callable[[], Service],
        *,
        name: str = "worker",
        interval_s: float = 2.0,
    ) -> None:
        self.engine = engine
        self.factory = factory
        self.name = name
        self.interval_s = interval_s
        self.service: Service | None = None
        self.waiting_reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()

    def wake(self) -> None:
        if self.service is not None:
            self.service.wake()

    async def start(self) -> None:
        await self._check()
        self._task = asyncio.create_task(self._watch(), name=f"{self.name}-schema-watch")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self._lock:
            if self.service is not None:
                await self.service.stop()
                self.service = None

    async def _watch(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.interval_s)
            if not self._stopping.is_set():
                await self._check()

    async def _check(self) -> None:
        try:
            state = await read_schema_state(self.engine)
        except Exception as exc:
            # An unreachable database is not a schema problem: the service's own retries and
            # logs cover it; checked again at the next interval.
            logger.debug("schema.check_failed error=%s", type(exc).__name__)
            return
        async with self._lock:
            if state.at_head:
                if self.service is None and not self._stopping.is_set():
                    if self.waiting_reason is not None:
                        logger.info("%s.resumed reason=the database schema is at head", self.name)
                    self.waiting_reason = None
                    self.service = self.factory()
                    await self.service.start()
                return
            if self.waiting_reason is None:  # one line per episode, however long it lasts
                self.waiting_reason = state.describe()
                logger.warning("%s.waiting reason=%s", self.name, self.waiting_reason)
            if self.service is not None:
                # `service` stays set until it has stopped: no claim of it is still in flight
                # once it reads None (tests/health/test_schema.py relies on that)
                await self.service.stop()
                self.service = None


async def check_schema_at_start(engine: AsyncEngine) -> None:
    """Refuse to start on a schema that is not at head; an unreachable database is not refused
    here (it may come back: `/health` and `/readyz` report it meanwhile)."""
    try:
        state = await read_schema_state(engine)
    except Exception as exc:
        logger.warning("schema.unchecked reason=database unreachable error=%s", type(exc).__name__)
        return
    if not state.at_head:
        raise SchemaNotAtHead(state)
