"""Background writers: captures and the request log leave the response path here.

A request only appends a row to a bounded in-memory buffer (no I/O, no await). One task per
table inserts the buffer in batches every `flush_interval_s` (sooner when a batch is full),
and `stop()` writes what is left on shutdown. If the buffer is full the row is dropped, and
that loss is counted (`gateway_writer_dropped_total{table=…}`) and logged, never silent.

A failed insert is retried with backoff when the database is unreachable (rows stay queued);
a batch the database rejects for its content is retried row by row so one bad row cannot
block the rest, and each rejected row is counted as dropped (for good: never retried).

With a spool (app/gateway/spool.py, `INFERENCE__SPOOL_DIR`) every row is also appended to a
local file before its answer completes, so the memory buffer is no longer the only copy:
- a kill -9 loses nothing: the next writer to find the file unlocked replays it;
- a row the full buffer drops (still counted as `buffer_full`, the memory bound holds) stays
  in its file, which is replayed from disk once the database takes rows again, and only then
  deleted: such a row lands late, but it lands;
- at shutdown with the database away the rows stay in the spool (not counted as lost).
Inserts are idempotent (`INSERT … ON CONFLICT (id) DO NOTHING`, the id assigned by the app
before the row was spooled), so a row replayed after it was committed is stored once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import is_unavailable
from app.gateway.models import GatewayRequest
from app.gateway.spool import Segment, Spool, adoptable, decode, encode, file_lines

logger = logging.getLogger(__name__)

_OVERFLOW_LOG_EVERY_S = 10.0
# Short: once the database is back, buffered rows should land within seconds.
_MAX_BACKOFF_S = 5.0


class WriterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "gateway_writer_rows_written_total",
            "Rows the gateway's background writers inserted.",
            ["table"],
            registry=registry,
        )
        self.dropped = Counter(
            "gateway_writer_dropped_total",
            "Rows dropped: buffer full (with a spool the row still lands, replayed from its file), "
            "rejected by the database, or pending at shutdown with the DB down and no spool.",
            ["table", "reason"],
            registry=registry,
        )
        self.failures = Counter(
            "gateway_writer_failures_total",
            "Failed batch inserts (rows kept and retried).",
            ["table"],
            registry=registry,
        )
        self.pending = Gauge(
            "gateway_writer_pending_rows",
            "Rows waiting in a background writer's buffer.",
            ["table"],
            registry=registry,
        )
        self.spool_write_errors = Counter(
            "gateway_spool_write_errors_total",
            "Rows that could not be appended to the spool (disk full, I/O error): kept in memory only.",
            ["table"],
            registry=registry,
        )
        self.replayed = Counter(
            "gateway_spool_rows_replayed_total",
            "Spooled rows replayed from a file (a dead process's, or rows the full buffer dropped).",
            ["table"],
            registry=registry,
        )


def _is_transient(exc: BaseException) -> bool:
    # Includes a Postgres shutting down or starting up (57P01 "terminating connection due to
    # administrator command", 57P03 "starting up"): rows kept, not rejected as bad content.
    return is_unavailable(exc)


# A queued row: the dict itself, or (with a spool) the line it was spooled as, decoded when
# it is inserted; and the spool segment holding it.
Entry = tuple[dict[str, Any] | bytes, Segment | None]


class BatchWriter:
    """A bounded buffer of rows for one table and the task that inserts them in batches."""

    def __init__(
        self,
        table: sa.Table,
        engine: AsyncEngine,
        metrics: WriterMetrics,
        *,
        capacity: int,
        batch_size: int,
        interval_s: float,
        spool: Spool | None = None,
    ) -> None:
        self.table = table
        self.name = table.name
        self._engine = engine
        self._capacity = capacity
        self._batch_size = batch_size
        self._interval_s = interval_s
        self.spool = spool
        self._rows: collections.deque[Entry] = collections.deque()
        self._wakeup = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._written = metrics.written.labels(self.name)
        self._replayed = metrics.replayed.labels(self.name)
        self._spool_write_errors = metrics.spool_write_errors.labels(self.name)
        self._dropped_full = metrics.dropped.labels(self.name, "buffer_full")
        self._dropped_rejected = metrics.dropped.labels(self.name, "rejected")
        self._dropped_shutdown = metrics.dropped.labels(self.name, "shutdown")
        self._failures = metrics.failures.labels(self.name)
        metrics.pending.labels(self.name).set_function(lambda: len(self._rows))
        self._overflow_unlogged = 0
        self._overflow_logged_at = -_OVERFLOW_LOG_EVERY_S
        self._adopted_at = -float("inf")
        self._datetime_columns = _datetime_columns(table)
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        # Idempotent on the primary key: a spooled row replayed after its commit is a no-op.
        self._insert_stmt = insert(table).on_conflict_do_nothing(index_elements=[table.c.id])

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def snapshots(self) -> bool:
        """`put` serialises the row at once: the caller may change its objects afterwards."""
        return self.spool is not None

    def put(self, row: dict[str, Any]) -> bool:
        """Spool one row (if spooling), then queue it; False (counted and logged) if the buffer
        is full: a spooled row then still lands, replayed from its file later.

        With a spool the buffer keeps the spooled line, not the dict: the one serialisation
        is both the file's line and the snapshot (the gateway skips its deep copy of the
        answer), and it is decoded again in the writer's batch, off the response path."""
        entry: dict[str, Any] | bytes = row
        segment = None
        if self.spool is not None:
            entry = encode(row)
            segment = self.spool.append(entry)
            if segment is None:
                self._spool_write_errors.inc()
        if len(self._rows) >= self._capacity:
            if segment is not None:
                segment.dropped += 1
            self._overflow(1)
            return False
        self._rows.append((entry, segment))
        if len(self._rows) >= self._batch_size:
            self._wakeup.set()
        return True

    def _overflow(self, count: int) -> None:
        self._dropped_full.inc(count)
        self._overflow_unlogged += count
        now = time.monotonic()
        if now - self._overflow_logged_at >= _OVERFLOW_LOG_EVERY_S:
            logger.warning(
                "gateway.writer_overflow table=%s dropped=%d capacity=%d spooled=%s",
                self.name,
                self._overflow_unlogged,
                self._capacity,
                self.spool is not None,
            )
            self._overflow_logged_at = now
            self._overflow_unlogged = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"gateway-writer-{self.name}")

    async def _run(self) -> None:
        failures = 0
        first = True
        while not self._stopping:
            if first:
                delay = 0.0  # adopt what dead processes left at once
            elif failures:
                delay = min(self._interval_s * 2**failures, _MAX_BACKOFF_S)
            else:
                delay = self._interval_s
            first = False
            try:
                await asyncio.wait_for(self._wakeup.wait(), delay)
            except TimeoutError:
                pass
            self._wakeup.clear()
            try:
                await self.flush()
                await self.maintain_spool()
                failures = 0
            except Exception as exc:
                failures += 1
                self._failures.inc()
                logger.error(
                    "gateway.writer_failed table=%s pending=%d error=%s attempt=%d",
                    self.name,
                    len(self._rows),
                    type(exc).__name__,
                    failures,
                )

    async def flush(self) -> None:
        """Insert every queued row now; raises (rows kept) if the database is unreachable.

        Flushes run one at a time, so a flush returns only once rows another flush had already
        taken off the buffer are written too (what shutdown and tests rely on)."""
        async with self._flush_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        while self._rows:
            batch = [self._rows.popleft() for _ in range(min(self._batch_size, len(self._rows)))]
            try:
                await self._insert([self._row(entry) for entry, _ in batch])
            except Exception as exc:
                if _is_transient(exc):
                    self._rows.extendleft(reversed(batch))
                    raise
                await self._insert_one_by_one(batch, exc)
            else:
                _settle(batch)

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(self._insert_stmt, rows)
        self._written.inc(len(rows))

    async def _insert_one_by_one(self, entries: list[Entry], first_error: BaseException) -> None:
        logger.warning(
            "gateway.writer_batch_rejected table=%s rows=%d error=%s; retrying row by row",
            self.name,
            len(entries),
            type(first_error).__name__,
        )
        for index, (entry, segment) in enumerate(entries):
            row = self._row(entry)
            try:
                await self._insert([row])
            except Exception as exc:
                if _is_transient(exc):
                    self._rows.extendleft(reversed(entries[index:]))
                    raise
                self._reject(row, exc)
            if segment is not None:
                segment.settled += 1

    def _row(self, entry: dict[str, Any] | bytes) -> dict[str, Any]:
        if isinstance(entry, dict):
            return entry
        row = decode(entry, self._datetime_columns)
        assert row is not None, "a line this process encoded decodes"
        return row

    def _reject(self, row: dict[str, Any], exc: BaseException) -> None:
        self._dropped_rejected.inc()
        logger.error(
            "gateway.writer_row_rejected table=%s id=%s error=%s",
            self.name,
            row.get("id") or row.get("request_id"),
            exc.__class__.__name__,
        )

    # ------------------------------------------------------------------ the spool
    async def maintain_spool(self) -> None:
        """Rotate and delete this process's settled files, replay its files that hold rows the
        buffer dropped, and (every rotation interval) adopt dead processes' files. Raises if
        the database is unreachable (the files stay for the next round)."""
        spool = self.spool
        if spool is None:
            return
        for segment in spool.tick():
            await self._replay_file(segment.path)
            spool.forget(segment)
        now = time.monotonic()
        if now - self._adopted_at >= spool.rotate_s:
            await self.adopt()
            self._adopted_at = now

    async def adopt(self) -> int:
        """Replay and delete every spool file of this table whose process is gone; rows replayed."""
        spool = self.spool
        if spool is None:
            return 0
        own = {s.path for s in spool.rotated}
        if spool.current is not None:
            own.add(spool.current.path)
        total = 0
        for adopted in adoptable(spool.directory, self.name, own, spool.database):
            try:
                count = await self._replay_lines(adopted.lines())
            except BaseException:
                adopted.close(delete=False)  # unlocked again: adopted on a later round
                raise
            adopted.close(delete=True)
            total += count
            logger.info("gateway.spool_adopted table=%s file=%s rows=%d", self.name, adopted.path.name, count)
        return total

    async def _replay_file(self, path: Path) -> None:
        count = await self._replay_lines(file_lines(path))
        logger.info("gateway.spool_replayed table=%s file=%s rows=%d", self.name, path.name, count)

    async def _replay_lines(self, lines: Any) -> int:
        """Insert the rows of a spool file in batches (idempotent); raises if the DB is away."""
        count = 0
        batch: list[dict[str, Any]] = []
        for line in lines:
            row = decode(line, self._datetime_columns)
            if row is None:
                if line.strip():
                    self._reject({}, ValueError("undecodable spool line"))
                continue
            batch.append(row)
            if len(batch) >= self._batch_size:
                count += await self._replay_batch(batch)
                batch = []
        if batch:
            count += await self._replay_batch(batch)
        return count

    async def _replay_batch(self, rows: list[dict[str, Any]]) -> int:
        try:
            await self._insert(rows)
        except Exception as exc:
            if _is_transient(exc):
                raise
            for row in rows:
                try:
                    await self._insert([row])
                except Exception as row_exc:
                    if _is_transient(row_exc):
                        raise
                    self._reject(row, row_exc)
        self._replayed.inc(len(rows))
        return len(rows)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the task and write what is pending; rows that cannot be written are counted,
        unless they are spooled (then they wait in the spool for the next process)."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None
        if self.spool is not None:
            self.spool.rotate()  # so that a file whose rows all land now is deleted below
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
            if self.spool is not None:
                with contextlib.suppress(Exception):  # what is left waits in the spool
                    await asyncio.wait_for(self.maintain_spool(), timeout_s)
        except Exception as exc:
            unspooled = sum(1 for _, segment in self._rows if segment is None)
            self._rows.clear()
            self._dropped_shutdown.inc(unspooled)
            logger.error(
                "gateway.writer_lost_at_shutdown table=%s rows=%d error=%s",
                self.name,
                unspooled,
                type(exc).__name__,
            )
        if self.spool is not None:
            left = self.spool.close()
            if left:
                logger.warning(
                    "gateway.spool_left table=%s rows=%d (the next process replays them)", self.name, left
                )


def _datetime_columns(table: sa.Table) -> tuple[str, ...]:
    """Columns whose spooled JSON strings are parsed back into datetimes on replay."""
    return tuple(
        column.name
        for column in table.columns
        if isinstance(column.type, sa.DateTime) or isinstance(getattr(column.type, "impl", None), sa.DateTime)
    )


def _settle(batch: list[Entry]) -> None:
    for _, segment in batch:
        if segment is not None:
            segment.settled += 1


async def sweep_request_log(
    engine: AsyncEngine, *, retention_days: int, batch_size: int, now: dt.datetime | None = None
) -> int:
    """Delete request-log rows older than `retention_days`, in batches of `batch_size`.

    Small transactions keep locks short (SQLite has one writer) and let several processes
    sweep at once without conflict. Returns the number of rows deleted.
    """
    if retention_days <= 0:
        return 0
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=retention_days)
    table: sa.Table = GatewayRequest.__table__  # type: ignore[assignment]
    total = 0
    while True:
        oldest = (
            sa.select(table.c.id)
            .where(table.c.created_at < cutoff)
            .order_by(table.c.created_at)
            .limit(batch_size)
        )
        async with engine.begin() as conn:
            result = await conn.execute(sa.delete(table).where(table.c.id.in_(oldest)))
        deleted = result.rowcount or 0
        total += deleted
        if deleted < batch_size:
            return total
        await asyncio.sleep(0)  # let requests run between batches
