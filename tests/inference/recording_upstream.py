"""A real HTTP/1.1 upstream on a loopback port that records what the gateway sends it.

The W&B emulator answers like W&B; this server exists for what the emulator cannot show: the
exact request the gateway forwarded (headers, body), headers the upstream sets that must not be
relayed, and whether the gateway closed a stream's connection before the stream ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Reply:
    """What to answer to the next requests: a JSON body or SSE events, optional extra headers."""

    status: int = 200
    json: dict[str, Any] | None = None
    raw: bytes | None = None
    events: list[dict[str, Any]] | None = None
    event_delay_s: float = 0.0
    delay_s: float = 0.0  # before answering at all
    gated: bool = False  # send each stream event after the first only once `release()` is called
    headers: list[tuple[str, str]] = field(default_factory=list)


def completion(content: str = "Hello from the recording upstream.", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-rec",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "recorded",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
        **extra,
    }


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-rec",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "recorded",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


class RecordingUpstream:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.reply = Reply(json=completion())
        self.connections = 0
        self.streams_completed = 0
        self.streams_aborted = 0
        self.stream_closed = asyncio.Event()
        self._gate: asyncio.Queue[None] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Recorded(method, path, headers, orjson.loads(body) if body else {}))
                await self._answer(writer)
                if ("Connection", "close") in self.reply.headers:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        reply = self.reply
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers)
        if reply.events is None:
            body = reply.raw if reply.raw is not None else orjson.dumps(reply.json or {})
            writer.write(
                f"HTTP/1.1 {reply.status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                f"{extra}\r\n".encode("latin-1")
                + body
            )
            await writer.drain()
            return
        writer.write(
            f"HTTP/1.1 {reply.status} X\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
            f"{extra}\r\n".encode("latin-1")
        )
        try:
            events = [*(b"data: " + orjson.dumps(e) + b"\n\n" for e in reply.events), b"data: [DONE]\n\n"]
            for index, event in enumerate(events):
                if reply.gated and index:
                    await self._gate.get()
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                if reply.event_delay_s:
                    await asyncio.sleep(reply.event_delay_s)
                    if writer.is_closing() or writer.transport.get_extra_info("socket") is None:
                        raise ConnectionResetError
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            self.streams_completed += 1
        except ConnectionError:
            self.streams_aborted += 1
            raise
        finally:
            self.stream_closed.set()

    def release(self) -> None:
        """Let a gated stream send its next event."""
        self._gate.put_nowait(None)

    async def wait_stream_closed(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stream_closed.wait(), 10.0)
