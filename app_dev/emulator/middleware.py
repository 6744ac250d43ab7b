"""Pure ASGI middleware that counts requests per route key and applies injected transport faults."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app_dev.emulator.faults import Fault
from app_dev.emulator.state import EmulatorState

logger = logging.getLogger(__name__)

_ID = r"[^/]+"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/v1/preview/models/?$"), "models.create"),
    ("DELETE", re.compile(rf"^/v1/preview/models/{_ID}/?$"), "models.delete"),
    ("POST", re.compile(rf"^/v1/preview/models/{_ID}/log/?$"), "models.log"),
    ("GET", re.compile(rf"^/v1/preview/models/{_ID}/checkpoints/?$"), "checkpoints.list"),
    ("DELETE", re.compile(rf"^/v1/preview/models/{_ID}/checkpoints/?$"), "checkpoints.delete"),
    ("GET", re.compile(r"^/v1/preview/base-models/?$"), "base_models.list"),
    ("POST", re.compile(r"^/v1/preview/training-jobs/?$"), "training_jobs.create"),
    ("GET", re.compile(rf"^/v1/preview/training-jobs/{_ID}/?$"), "training_jobs.get"),
    ("GET", re.compile(rf"^/v1/preview/training-jobs/{_ID}/events/?$"), "events"),
    ("POST", re.compile(r"^(/v1)?/chat/completions/?$"), "chat"),
    ("GET", re.compile(r"^(/v1)?/(health|system-check)/?$"), "health"),
]


def route_key(method: str, path: str) -> str | None:
    """The fault/counter key of a W&B API request; None for admin and unknown paths."""
    for route_method, pattern, key in _ROUTES:
        if method == route_method and pattern.match(path):
            return key
    return None


class ConnectionDropped(Exception):
    """Raised when a drop fault fires without a real socket (e.g. httpx's ASGITransport)."""


async def drop_connection(receive: Receive) -> None:
    """Close the client's socket without writing a response.

    uvicorn's `receive` is a bound method of its request cycle, which holds the asyncio
    transport; closing it makes the client see "server disconnected without a response".
    """
    transport: Any = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionDropped("emulator dropped the connection")
    transport.close()
    # Let uvicorn process connection_lost so it does not try to write a 500 afterwards.
    for _ in range(3):
        await asyncio.sleep(0)


async def send_error(send: Send, status: int, detail: str, retry_after: float | None = None) -> None:
    body = orjson.dumps({"detail": detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        value = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
        headers.append((b"retry-after", value.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FaultMiddleware:
    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = route_key(scope["method"], scope["path"])
        if key is None:
            await self.app(scope, receive, send)
            return
        self.state.count_request(key)
        fault = self.state.take_fault(key)
        if fault is None:
            await self.app(scope, receive, send)
            return
        logger.info("emulator.fault route=%s kind=%s fault_id=%s", key, fault.kind, fault.id)
        await self._apply(fault, scope, receive, send)

    async def _apply(self, fault: Fault, scope: Scope, receive: Receive, send: Send) -> None:
        if fault.kind == "status":
            await send_error(send, fault.status, fault.response_detail(), self._retry_after(fault))
        elif fault.kind == "drop" and fault.after_chunks is not None:
            await self._drop_mid_response(fault.after_chunks, scope, receive, send)
        elif fault.kind == "drop":
            await drop_connection(receive)
        elif fault.kind == "hang":
            if await self._hang(fault.seconds, fault.generation):
                await self.app(scope, receive, send)
            else:
                await drop_connection(receive)
        else:  # accept_then_status / accept_then_drop: the route runs, its answer is thrown away
            await self.app(scope, receive, self._discard)
            if fault.kind == "accept_then_status":
                await send_error(send, fault.status, fault.response_detail(), self._retry_after(fault))
            else:
                await drop_connection(receive)

    async def _drop_mid_response(self, chunks: int, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward the response start and `chunks` body messages, then cut the connection."""
        sent = 0
        dropped = False

        async def forward(message: Message) -> None:
            nonlocal sent, dropped
            if dropped:
                return
            if message["type"] == "http.response.body":
                # The last body message is never delivered, so the response stays incomplete.
                if sent >= chunks or not message.get("more_body", False):
                    dropped = True
                    await drop_connection(receive)
                    return
                sent += 1
            await send(message)

        await self.app(scope, receive, forward)
        if not dropped:  # the response had fewer messages than `chunks`: still cut it
            await drop_connection(receive)

    @staticmethod
    def _retry_after(fault: Fault) -> float | None:
        if fault.retry_after is not None:
            return fault.retry_after
        return 0 if fault.status == 429 else None

    async def _hang(self, seconds: float, generation: int) -> bool:
        """Sleep in small slices; False when the emulator was reset since the fault fired."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            await asyncio.sleep(min(0.05, remaining))
            if self.state.generation != generation:
                return False
        return True

    @staticmethod
    async def _discard(message: Message) -> None:
        return None
