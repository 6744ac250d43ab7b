"""Streaming reads from the game's Postgres (babylon-data.md §1–3).

One `BabylonReader` holds two connections in one consistent snapshot: the *stream*
connection runs the selection as binary `COPY (SELECT …) TO STDOUT`, decoded chunk by
chunk, so memory is bounded by one chunk whatever the table size; the *aux* connection
(same exported snapshot) answers the small lookups the builder makes while a window is
open: that window's `market_outcomes` and the `llm_call_logs` of the trajectories it keeps.

Rows arrive ordered by their group key (the window), one pass over the table however many
windows are asked for: window-id and time-range selections walk the `"windowId"` index
(`trajectories_windowId_idx`) in order, so the server neither sorts nor rescans.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from app.babylon.connection import asyncpg_dsn
from app.babylon.copy_binary import BinaryCopyDecoder, Row
from app.babylon.scorers import MarketOutcomes

logger = logging.getLogger(__name__)

# Every streamed row has two fields, as raw bytes: `meta`, a JSON array
# [trajectoryId, agentId, group_key, windowId or null, endTime in ms], and `"stepsJson"`.
# Two fields instead of six halve the client's per-row decoding work; JSON keeps any id intact.
COLUMNS = ("meta", "steps")
_GROUP_KEY = """coalesce("windowId", "scenarioId", to_char("endTime", 'YYYY-MM-DD"T"HH24:00'))"""
_SELECT = """
SELECT json_build_array("trajectoryId", "agentId", {group_key}, "windowId",
                        (extract(epoch FROM "endTime") * 1000)::int8)::text AS meta,
       "stepsJson"
FROM trajectories
WHERE "isTrainingData" {used} AND {where}
ORDER BY {order}
"""
_HOUR_FORMAT = "%Y-%m-%dT%H:00"


@dataclass(frozen=True)
class Selection:
    """Which game rows to read: `"isTrainingData"` rows not yet used in training (unless
    `include_used`), by window ids, by `"endTime"` range [start, end), or by trajectory ids."""

    window_ids: tuple[str, ...] | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    trajectory_ids: tuple[str, ...] | None = None
    include_used: bool = False


def _naive_utc(value: dt.datetime) -> dt.datetime:
    # the game's columns are TIMESTAMP(3) without time zone holding UTC (babylon-data.md §1)
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


@dataclass(frozen=True)
class _Phase:
    query: str
    args: tuple[Any, ...]
    index_ordered: bool  # ORDER BY "windowId": force the index walk rather than a sort


def _phases(selection: Selection) -> list[_Phase]:
    used = "" if selection.include_used else 'AND NOT "usedInTraining"'

    def q(where: str, order: str) -> str:
        return _SELECT.format(group_key=_GROUP_KEY, used=used, where=where, order=order)

    if selection.trajectory_ids is not None:
        # an explicit list (a training batch): the server sorts just those rows
        return [
            _Phase(
                q('"trajectoryId" = ANY($1::text[])', f'{_GROUP_KEY}, "endTime"'),
                (list(selection.trajectory_ids),),
                False,
            )
        ]
    if selection.window_ids is not None:
        return [
            _Phase(
                q('"windowId" = ANY($1::text[])', '"windowId"'), (sorted(set(selection.window_ids)),), True
            )
        ]
    start = _naive_utc(selection.start) if selection.start is not None else None
    end = _naive_utc(selection.end) if selection.end is not None else None
    time_conds: list[str] = []
    time_args: list[Any] = []
    if start is not None:
        time_args.append(start)
        time_conds.append(f'"endTime" >= ${len(time_args)}')
    if end is not None:
        time_args.append(end)
        time_conds.append(f'"endTime" < ${len(time_args)}')
    # bound the index walk by the windows the range can touch (a window is the hour of "endTime")
    window_conds = list(time_conds)
    window_args = list(time_args)
    if start is not None:
        window_args.append(start.strftime(_HOUR_FORMAT))
        window_conds.append(f'"windowId" >= ${len(window_args)}')
    if end is not None:
        window_args.append((end - dt.timedelta(microseconds=1)).strftime(_HOUR_FORMAT))
        window_conds.append(f'"windowId" <= ${len(window_args)}')
    windowed = " AND ".join(['"windowId" IS NOT NULL', *window_conds])
    # plugin rows have no window (babylon-data.md §3.4): grouped by scenario, else end hour
    windowless = " AND ".join(['"windowId" IS NULL', *time_conds])
    return [
        _Phase(q(windowed, '"windowId"'), tuple(window_args), True),
        _Phase(q(windowless, f'{_GROUP_KEY}, "endTime"'), tuple(time_args), False),
    ]


def decode_outcome_rows(rows: Sequence[asyncpg.Record]) -> MarketOutcomes:
    predictions: dict[str, str] = {}
    stocks: dict[str, float] = {}
    for row in rows:
        market, outcome, ticker, change = row[0], row[1], row[2], row[3]
        if market and outcome is not None:
            predictions.setdefault(str(market), str(outcome))
        elif ticker and change is not None:
            stocks.setdefault(
                str(ticker), float(change) if isinstance(change, (Decimal, int, float)) else 0.0
            )
    return MarketOutcomes(predictions=predictions, stocks=stocks)


@dataclass(frozen=True)
class LoggedCall:
    """One `llm_call_logs` row, in the shape of a step's `llmCalls[]` entry."""

    trajectory_id: str
    call: dict[str, Any]


class BabylonReader:
    """Use as `async with BabylonReader(url) as reader:`; every read sees one snapshot."""

    def __init__(
        self, url: str, *, connect_timeout_s: float = 30.0, stream_timeout_s: float = 3600.0
    ) -> None:
        self._dsn = asyncpg_dsn(url)
        self._connect_timeout_s = connect_timeout_s
        self._stream_timeout_s = stream_timeout_s
        self._stream: asyncpg.Connection | None = None
        self._aux: asyncpg.Connection | None = None
        self.bytes_read = 0

    async def __aenter__(self) -> BabylonReader:
        self._stream = await asyncpg.connect(self._dsn, timeout=self._connect_timeout_s, command_timeout=60)
        try:
            self._aux = await asyncpg.connect(self._dsn, timeout=self._connect_timeout_s, command_timeout=60)
            await self._stream.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = await self._stream.fetchval("SELECT pg_export_snapshot()")
            await self._aux.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            await self._aux.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for conn in (self._aux, self._stream):
            if conn is not None and not conn.is_closed():
                try:
                    await conn.close(timeout=5)
                except Exception:  # closing after a failure: nothing left to save
                    conn.terminate()
        self._stream = self._aux = None

    @property
    def _conns(self) -> tuple[asyncpg.Connection, asyncpg.Connection]:
        if self._stream is None or self._aux is None:
            raise RuntimeError("BabylonReader used outside `async with`")
        return self._stream, self._aux

    async def stream(self, selection: Selection, sink: Callable[[list[Row]], Awaitable[None]]) -> int:
        """Send the selected rows, in group-key order, to `sink` a decoded chunk at a time."""
        stream, _ = self._conns
        total = 0
        for phase in _phases(selection):
            decoder = BinaryCopyDecoder()

            async def on_chunk(chunk: bytes, decoder: BinaryCopyDecoder = decoder) -> None:
                self.bytes_read += len(chunk)
                rows = decoder.feed(chunk)
                if rows:
                    await sink(rows)

            # the planner would rather sort a large selection than walk the index; the index
            # walk streams in window order without a 2 GB sort (RESULTS.md: "stream" variant)
            await stream.execute(f"SET LOCAL enable_sort = {'off' if phase.index_ordered else 'on'}")
            await stream.copy_from_query(
                phase.query, *phase.args, output=on_chunk, format="binary", timeout=self._stream_timeout_s
            )
            decoder.check_complete()
            total += decoder.rows_decoded
        return total

    async def market_outcomes(self, window_id: str) -> MarketOutcomes:
        _, aux = self._conns
        rows = await aux.fetch(
            'SELECT "predictionMarketId", outcome, "stockTicker", "changePercent" FROM market_outcomes '
            'WHERE "windowId" = $1 ORDER BY "createdAt", id',
            window_id,
        )
        return decode_outcome_rows(rows)

    async def logged_calls(self, trajectory_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """The `llm_call_logs` rows of these trajectories as `llmCalls[]`-shaped dicts, in call order."""
        if not trajectory_ids:
            return {}
        _, aux = self._conns
        rows = await aux.fetch(
            'SELECT "trajectoryId", "messagesJson", "systemPrompt", "userPrompt", response FROM llm_call_logs '
            'WHERE "trajectoryId" = ANY($1::text[]) ORDER BY "trajectoryId", "timestamp", "callId"',
            list(trajectory_ids),
        )
        calls: dict[str, list[dict[str, Any]]] = {}
        for tid, messages_json, system, user, response in rows:
            call: dict[str, Any] = {"systemPrompt": system, "userPrompt": user, "response": response}
            if messages_json:
                try:
                    messages = orjson.loads(messages_json)
                except orjson.JSONDecodeError:
                    messages = None
                if isinstance(messages, list):
                    call["messages"] = messages
            calls.setdefault(tid, []).append(call)
        return calls
