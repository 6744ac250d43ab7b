"""The hand-written HTTP/1.1 client the gateway used before aiohttp (app/gateway/upstream.py at
commit c2271a7), kept in bench/ only so the benchmark can measure it against the libraries.
It fails the conformance suite (interim 1xx, EOF bodies, gzip); never import it from app/.

Its original docstring:

A lean HTTP/1.1 client for the one upstream the gateway talks to (W&B inference).

Why not httpx: `shared/bench/proxy/RESULTS.md` measured a pass-through on one shared
`httpx.AsyncClient` losing throughput as concurrency grows (1,180 → 735 → 440–530 req/s,
0.83 → 2.3 ms CPU per request at c=1 → c=128): httpcore's pool does O(connections) work per
request under its lock, and each request pays for several layers of streams and events. This
client is an `asyncio.Protocol` with the `httptools` parser (the one uvicorn uses), a LIFO pool
of keep-alive connections (O(1) checkout and return), one future per wait and one timer per wait.

Semantics that matter to the gateway:
- `read_timeout_s` bounds the wait for the response headers and for each further piece of the
  body, as httpx's read timeout does, so a slow stream is fine while a silent upstream is not.
- A response that is not read to its end is not reused: `aclose()` aborts its connection, which
  is how a client disconnect cancels the upstream request.
- Nothing is retried: a chat completion is not idempotent (it costs a generation). Idle
  connections are dropped after `keepalive_expiry` (below common server idle timeouts) so a
  request rarely meets a connection the server is closing; if it does, the caller gets
  `upstream_disconnected` and the SDK's own retry applies.
- Streamed bodies are flow-controlled: reading pauses while more than `high_water` bytes wait
  for a slow client.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any
from urllib.parse import urlsplit

import httptools


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer properly; `code` names the case."""

    code = "upstream_error"


class UpstreamConnectError(UpstreamError):
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


class UpstreamDisconnected(UpstreamError):
    """The upstream closed the connection before the response was complete."""

    code = "upstream_disconnected"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_invalid_response"


class PoolTimeout(UpstreamError):
    """Every upstream connection stayed busy for `pool_timeout_s`."""

    code = "upstream_busy"


class UpstreamResponse:
    """One response being received. Read it with `read()` or `next_data()`; always `aclose()`."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_got_bytes",
        "_headers_done",
        "_keep_alive",
        "_released",
        "_streaming",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._headers_done = False
        self._done = False
        self._keep_alive = False
        self._error: BaseException | None = None
        self._got_bytes = False
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        self._streaming = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (`name` in lower case)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def complete(self) -> bool:
        return self._done

    # --- called by the connection -------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._streaming and self._buffered > self._conn.pool.high_water:
            self._conn.pause()
        self._wake()

    def _on_complete(self, keep_alive: bool) -> None:
        self._done = True
        self._keep_alive = keep_alive
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._done or self._error is not None:
            return
        self._error = exc
        self._wake()

    # --- called by the consumer ---------------------------------------------------------
    async def _wait(self) -> None:
        conn = self._conn
        loop = conn.pool.loop
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(conn.pool.read_timeout, self._on_timeout, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _on_timeout(self, waiter: asyncio.Future[None]) -> None:
        if waiter is self._waiter and not waiter.done():
            self._fail(UpstreamTimeout(f"no data from the upstream for {self._conn.pool.read_timeout:g}s"))

    async def _wait_headers(self) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read(self) -> bytes:
        """The whole body (waits for the end of the response)."""
        while not self._done:
            if self._error is not None:
                raise self._error
            await self._wait()
        body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks = []
        self._buffered = 0
        self._release()
        return body

    async def next_data(self) -> bytes | None:
        """Every body byte received since the last call (waiting for some), or None at the end."""
        self._streaming = True
        while True:
            if self._chunks:
                chunks = self._chunks
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._chunks = []
                self._buffered = 0
                self._conn.resume()
                return data
            if self._done:
                self._release()
                return None
            if self._error is not None:
                raise self._error
            await self._wait()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        self._conn.finish(self, reusable=self._done and self._keep_alive and self._error is None)

    async def aclose(self) -> None:
        """Return the connection to the pool if the response was read to its end, else abort it."""
        self._release()

    def close(self) -> None:
        self._release()


class _Connection(asyncio.Protocol):
    __slots__ = ("idle_since", "parser", "paused", "pool", "requests", "response", "transport")

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.idle_since = 0.0
        self.requests = 0
        self.paused = False

    @property
    def alive(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    # --- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement its interface.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            # Bytes nobody asked for (the server misbehaves): this connection is unusable.
            self.abort()
            return
        response._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(UpstreamProtocolError(f"invalid HTTP response from the upstream: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        response = self.response
        if response is not None:
            if response._got_bytes:
                response._fail(UpstreamDisconnected("the upstream closed the connection mid-response"))
            else:
                response._fail(UpstreamDisconnected("the upstream closed the connection without answering"))
        self.pool._discard(self)

    # --- httptools callbacks --------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        response = self.response
        if response is not None:
            response.status = self.parser.get_status_code()
            response._headers_done = True
            response._wake()

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._on_body(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response._on_complete(self.parser.should_keep_alive())

    # --- used by the pool and the response ------------------------------------------------
    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def finish(self, response: UpstreamResponse, *, reusable: bool) -> None:
        if self.response is not response:
            return
        self.response = None
        self.resume()
        if reusable and self.alive:
            self.pool._checkin(self)
        else:
            # Aborting tells the upstream we are gone: it stops generating for us.
            self.abort()
            self.pool._discard(self)


class UpstreamPool:
    """Keep-alive connections to one origin (scheme, host, port), at most `max_connections`."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 512,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        pool_timeout: float = 30.0,
        keepalive_expiry: float = 4.0,
        high_water: int = 256 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported upstream URL {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default_port = 443 if self.tls else 80
        host_text = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host_text if self.port == default_port else f"{host_text}:{self.port}"
        self.base_path = parts.path.rstrip("/")
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self.keepalive_expiry = keepalive_expiry
        self.high_water = high_water
        self._ssl: ssl.SSLContext | None = (ssl_context or ssl.create_default_context()) if self.tls else None
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._connecting = 0
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._closed = False
        self.loop = asyncio.get_running_loop()

    @property
    def size(self) -> int:
        """Open and opening connections."""
        return len(self._open) + self._connecting

    @property
    def idle(self) -> int:
        return len(self._idle)

    def url(self, path: str) -> str:
        return self.base_path + path

    async def request(self, head: bytes, body: bytes) -> UpstreamResponse:
        """Send one request (`head` = request line and headers, ending with a blank line) and
        return once the response headers arrived. The caller must `aclose()` the response."""
        conn = await self._checkout()
        return await self._send(conn, head, body)

    async def _send(self, conn: _Connection, head: bytes, body: bytes) -> UpstreamResponse:
        response = UpstreamResponse(conn)
        conn.response = response
        conn.requests += 1
        assert conn.transport is not None
        conn.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            conn.transport.write(body)
        try:
            await response._wait_headers()
        except BaseException:
            response.close()
            raise
        return response

    async def _checkout(self) -> _Connection:
        if self._closed:
            raise UpstreamConnectError("the gateway is shutting down")
        now = self.loop.time()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.alive:
                continue
            if now - conn.idle_since > self.keepalive_expiry:
                conn.abort()
                continue
            return conn
        if self.size < self.max_connections:
            return await self._connect()
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            conn_or_none = await asyncio.wait_for(waiter, self.pool_timeout)
        except TimeoutError:
            raise PoolTimeout(
                f"all {self.max_connections} upstream connections stayed busy for {self.pool_timeout:g}s"
            ) from None
        finally:
            if not waiter.done():
                waiter.cancel()
        if conn_or_none is not None and conn_or_none.alive:
            return conn_or_none
        return await self._connect()

    async def _connect(self) -> _Connection:
        self._connecting += 1
        try:
            _transport, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                ),
                self.connect_timeout,
            )
        except BaseException as exc:
            self._connecting -= 1
            self._wake_waiter(None)  # the slot this attempt held is free again
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(
                    f"connecting to the upstream took longer than {self.connect_timeout:g}s"
                ) from None
            if isinstance(exc, OSError):
                raise UpstreamConnectError(f"cannot connect to the upstream: {exc.strerror or exc}") from None
            raise
        # counted as open before the slot is released: the pool never exceeds its size
        self._open.add(conn)
        self._connecting -= 1
        return conn

    def _checkin(self, conn: _Connection) -> None:
        if self._closed:
            conn.abort()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    def _discard(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            if conn in self._idle:
                self._idle.remove(conn)
            self._wake_waiter(None)

    def _wake_waiter(self, conn: _Connection | None) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return

    async def aclose(self) -> None:
        """Close every connection; responses still being read fail with UpstreamDisconnected."""
        self._closed = True
        for conn in list(self._open):
            conn.abort()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamConnectError("the gateway is shutting down"))
        await asyncio.sleep(0)


def build_request_head(
    method: str, path: str, host: str, headers: list[tuple[str, str]], content_length: int
) -> bytes:
    """The request line and headers of an HTTP/1.1 request with a body of `content_length` bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def header_dict(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """Headers as a plain dict (for logs and tests; the last value wins)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
