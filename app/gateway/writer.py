"""Background writers: captures and the request log leave the response path here.

A request only appends a row to a bounded in-memory buffer (no I/O, no await). One task per
table inserts the buffer in batches every `flush_interval_s` (sooner when a batch is full),
and `stop()` writes what is left on shutdown. If the buffer is full the row is dropped, and
that loss is counted (`gateway_writer_dropped_total{table=…}`) and logged, never silent.

A failed insert is retried with backoff when the database is unreachable (rows stay queued);
a batch the database rejects for its content is retried row by row so one bad row cannot
block the rest, and each rejected row is counted as dropped.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import time
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import is_unavailable
from app.gateway.models import GatewayRequest

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
            "Rows lost: buffer full, rejected by the database, or pending at shutdown with the DB down.",
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


def _is_transient(exc: BaseException) -> bool:
    # Includes a Postgres shutting down or starting up (57P01 "terminating connection due to
    # administrator command", 57P03 "starting up"): rows kept, not rejected as bad content.
    return is_unavailable(exc)


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
    ) -> None:
        self.table = table
        self.name = table.name
        self._engine = engine
        self._capacity = capacity
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._rows: collections.deque[dict[str, Any]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._written = metrics.written.labels(self.name)
        self._dropped_full = metrics.dropped.labels(self.name, "buffer_full")
        self._dropped_rejected = metrics.dropped.labels(self.name, "rejected")
        self._dropped_shutdown = metrics.dropped.labels(self.name, "shutdown")
        self._failures = metrics.failures.labels(self.name)
        metrics.pending.labels(self.name).set_function(lambda: len(self._rows))
        self._overflow_unlogged = 0
        self._overflow_logged_at = -_OVERFLOW_LOG_EVERY_S

    def __len__(self) -> int:
        return len(self._rows)

    def put(self, row: dict[str, Any]) -> bool:
        """Queue one row; False (counted and logged) if the buffer is full."""
        if len(self._rows) >= self._capacity:
            self._overflow(1)
            return False
        self._rows.append(row)
        if len(self._rows) >= self._batch_size:
            self._wakeup.set()
        return True

    def _overflow(self, count: int) -> None:
        self._dropped_full.inc(count)
        self._overflow_unlogged += count
        now = time.monotonic()
        if now - self._overflow_logged_at >= _OVERFLOW_LOG_EVERY_S:
            logger.warning(
                "gateway.writer_overflow table=%s dropped=%d capacity=%d",
                self.name,
                self._overflow_unlogged,
                self._capacity,
            )
            self._overflow_logged_at = now
            self._overflow_unlogged = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"gateway-writer-{self.name}")

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            if failures:
                delay = min(self._interval_s * 2**failures, _MAX_BACKOFF_S)
            else:
                delay = self._interval_s
            try:
                await asyncio.wait_for(self._wakeup.wait(), delay)
            except TimeoutError:
                pass
            self._wakeup.clear()
            try:
                await self.flush()
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
                await self._insert(batch)
            except Exception as exc:
                if _is_transient(exc):
                    self._rows.extendleft(reversed(batch))
                    raise
                await self._insert_one_by_one(batch, exc)

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.insert(self.table), rows)
        self._written.inc(len(rows))

    async def _insert_one_by_one(self, rows: list[dict[str, Any]], first_error: BaseException) -> None:
        logger.warning(
            "gateway.writer_batch_rejected table=%s rows=%d error=%s; retrying row by row",
            self.name,
            len(rows),
            type(first_error).__name__,
        )
        for index, row in enumerate(rows):
            try:
                await self._insert([row])
            except Exception as exc:
                if _is_transient(exc):
                    self._rows.extendleft(reversed(rows[index:]))
                    raise
                self._dropped_rejected.inc()
                logger.error(
                    "gateway.writer_row_rejected table=%s id=%s error=%s",
                    self.name,
                    row.get("id") or row.get("request_id"),
                    exc.__class__.__name__,
                )

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the task and write what is pending; rows that cannot be written are counted."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
        except Exception as exc:
            lost = len(self._rows)
            self._rows.clear()
            self._dropped_shutdown.inc(lost)
            logger.error(
                "gateway.writer_lost_at_shutdown table=%s rows=%d error=%s",
                self.name,
                lost,
                type(exc).__name__,
            )


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
