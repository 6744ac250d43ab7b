"""How a running job is stopped: a shutdown, a lost lease or a cancel, seen at its next wait.

A job's runner never blocks except in `Control.sleep` and `Control.call` (a W&B call), and
both return at once when the job is stopped, raising `Interrupted` with the reason. No DB
transaction is ever open around them (a transaction cut by task cancellation can leave
SQLite's write lock held), so stopping there is always safe.

Time comes from a `Clock`, so the tests can run a job's whole life, watchdogs included, on a
virtual clock in milliseconds (tests/training/fakes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import time
from collections.abc import Awaitable
from enum import IntEnum
from typing import TypeVar

from app.db import utcnow

T = TypeVar("T")


class Stop(IntEnum):
    """Why a runner stops; a higher value wins over a lower one when both happen."""

    HALT = 1  # the worker shuts down: leave the job resumable and hand it back
    CANCEL = 2  # a cancel was accepted: end the job cancelled
    LEASE_LOST = 3  # another worker owns the job now: write nothing


class Interrupted(Exception):
    def __init__(self, reason: Stop) -> None:
        super().__init__(reason.name.lower())
        self.reason = reason


class Clock:
    """Wall and monotonic time, and waiting for an event with a timeout."""

    def now(self) -> dt.datetime:
        return utcnow()

    def monotonic(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        """Return when `event` is set or `seconds` passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(0.0, seconds))


class Control:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._event = asyncio.Event()
        self.reason: Stop | None = None

    def stop(self, reason: Stop) -> None:
        if self.reason is None or reason > self.reason:
            self.reason = reason
        self._event.set()

    def check(self) -> None:
        if self.reason is not None:
            raise Interrupted(self.reason)

    async def sleep(self, seconds: float) -> None:
        self.check()
        await self.clock.wait(self._event, seconds)
        self.check()

    async def call(self, awaitable: Awaitable[T], *, stop_on: Stop = Stop.HALT) -> T:
        """Await a W&B call unless the job is stopped first (for a reason ≥ `stop_on`): then the
        call is cancelled, or left running when it is a shielded task (the training POST)."""
        if self.reason is not None and self.reason >= stop_on:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never started: nothing was sent
            raise Interrupted(self.reason)
        call = asyncio.ensure_future(awaitable)
        if call.done():
            return call.result()
        while True:
            stopped = asyncio.ensure_future(self._event.wait())
            try:
                await asyncio.wait({call, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
            if call.done():
                return call.result()
            if self.reason is not None and self.reason >= stop_on:
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await call
                raise Interrupted(self.reason)
            # stopped for a lesser reason (a shutdown while the POST lands): keep waiting for
            # the call; the reason stays set and the next wait raises it
            self._event = asyncio.Event()
