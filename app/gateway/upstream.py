"""The gateway's HTTP client for its one upstream (W&B inference): aiohttp, kept on a short leash.

aiohttp (`ClientSession` over a `TCPConnector`, the llhttp parser in C) speaks the protocol:
interim 1xx responses, bodies delimited by EOF, HTTP/1.0, chunked encoding with extensions and
trailers, gzip/br decoding, CONNECT tunnels through an egress proxy, TLS. bench/proxy/README.md
has the measurements that chose it over httpx (plain and over an aiohttp transport) and over
the hand-written client this module used to be.

What this module adds, and why:
- A bounded number of requests in flight (`max_connections`), waited for at most
  `pool_timeout_s`, then `PoolTimeout` (503 `upstream_busy`): a clear answer instead of an
  unbounded queue inside the connector.
- Separate timeouts: `connect_timeout_s` for TCP+TLS (and the proxy's tunnel),
  `read_timeout_s` for the response headers and then for *each* further read of the body, so a
  slow stream is fine while a silent upstream is not (504 `upstream_timeout`).
- No retry: a chat completion is not idempotent (it costs a generation); aiohttp retries only
  idempotent methods on a reused connection, never POST.
- A response not read to its end is never reused: `aclose()` closes its connection, which is
  also how a client disconnect cancels the upstream request. Cookies are never stored
  (`DummyCookieJar`): one caller's upstream cookies must not travel with another's request.
- Bounded memory: bodies above `max_response_bytes` fail with `UpstreamTooLarge` (502), headers
  above aiohttp's line/field limits with `UpstreamProtocolError` (502); streamed bodies are read
  only as fast as the client takes them (aiohttp pauses the socket above its buffer's high
  water mark).
- Decoded bodies: gzip and br are decoded here (captures and usage see JSON); the
  `content-encoding`/`content-length` of the encoded body are not relayed. An encoding that
  cannot be decoded is a 502, never undecodable bytes handed on.
- Proxy and trust come from app/outbound.py (one rule shared with the training client), decided
  once at start: the upstream is one origin.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client_exceptions import (
    ClientConnectorCertificateError,
    ClientConnectorDNSError,
    ClientConnectorError,
    ClientConnectorSSLError,
    ClientHttpProxyError,
    ClientPayloadError,
    ClientProxyConnectionError,
    ClientResponseError,
    ClientSSLError,
    ConnectionTimeoutError,
    ServerDisconnectedError,
    SocketTimeoutError,
)

from app.outbound import Outbound

# What aiohttp decodes (br through the `brotli` package, a dependency of this project).
DECODED_ENCODINGS = frozenset({b"gzip", b"x-gzip", b"deflate", b"br"})
IDENTITY = frozenset({b"", b"identity"})


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


class UpstreamTooLarge(UpstreamError):
    code = "upstream_response_too_large"


class UpstreamTLSError(UpstreamError):
    """TLS to the upstream (or to an https:// proxy) failed: certificate, hostname or handshake."""

    code = "upstream_tls_error"


class UpstreamProxyError(UpstreamError):
    """The egress proxy refused or failed the tunnel."""

    code = "upstream_proxy_error"


class PoolTimeout(UpstreamError):
    """Every upstream connection stayed busy for `pool_timeout_s`."""

    code = "upstream_busy"


def _tls_reason(exc: BaseException) -> str:
    """The verifier's own words: 'certificate verify failed: self-signed certificate…'."""
    cause = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None) or exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return str(cause.reason or cause)
    return str(cause or exc)


def translate(exc: BaseException, client: UpstreamClient) -> UpstreamError:
    """aiohttp's exception → ours (each names what went wrong, never a credential)."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, ConnectionTimeoutError):
        return UpstreamTimeout(f"connecting to the upstream took longer than {client.connect_timeout:g}s")
    if isinstance(exc, SocketTimeoutError | asyncio.TimeoutError):
        return UpstreamTimeout(f"no data from the upstream for {client.read_timeout:g}s")
    if isinstance(exc, ClientConnectorCertificateError | ClientConnectorSSLError | ClientSSLError):
        return UpstreamTLSError(f"TLS with {client.host} failed: {_tls_reason(exc)}")
    if isinstance(exc, ClientHttpProxyError):
        return UpstreamProxyError(
            f"the proxy {client.proxy_url} refused the tunnel to {client.host}: HTTP {exc.status} {exc.message}"
        )
    if isinstance(exc, ClientProxyConnectionError):
        return UpstreamProxyError(f"cannot connect to the proxy {client.proxy_url}: {_os_reason(exc)}")
    if isinstance(exc, ClientConnectorDNSError):
        return UpstreamConnectError(f"cannot resolve the upstream host {client.host}")
    if isinstance(exc, ClientConnectorError):
        return UpstreamConnectError(f"cannot connect to the upstream: {_os_reason(exc)}")
    if isinstance(exc, ssl.SSLError):
        return UpstreamTLSError(f"TLS with {client.host} failed: {exc.reason or exc}")
    if isinstance(exc, ServerDisconnectedError):
        return UpstreamDisconnected("the upstream closed the connection without a complete answer")
    if isinstance(exc, ClientPayloadError):
        cause = exc.__cause__
        detail = " ".join(str(getattr(cause, "message", None) or cause or exc).split())[:200]
        if "encoding" in detail.lower() or "decompress" in detail.lower():
            return UpstreamProtocolError(f"cannot decode the upstream's body: {detail}")
        return UpstreamDisconnected(f"the upstream closed the connection mid-response ({detail})")
    if isinstance(exc, ClientResponseError):
        # raised for a response that cannot be parsed (bad status line, headers too long, …)
        return UpstreamProtocolError(f"invalid HTTP response from the upstream: {exc.message}"[:300])
    if isinstance(exc, aiohttp.ClientOSError | ConnectionError):
        if "write request body" in str(exc):
            return UpstreamDisconnected("the upstream closed the connection while the request was being sent")
        return UpstreamDisconnected(f"the upstream connection failed: {_os_reason(exc)}")
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamProtocolError(f"the upstream request failed: {type(exc).__name__}: {exc}"[:300])
    raise exc


def _os_reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class _IdleCheckingConnector(aiohttp.TCPConnector):
    """Never hands out an idle connection that received bytes while idle.

    A server that sends an unsolicited response (or anything) after a complete answer leaves it
    queued on the idle keep-alive connection, and aiohttp would give it to the next request as
    that request's answer: one caller receiving bytes meant for nobody, or for another caller.
    Such a connection is closed instead (aiohttp's own `should_close` says whether the
    protocol holds unread data). Found by tests/gateway/test_conformance.py.

    Overrides `TCPConnector._get` (aiohttp 3.14, connector.py: "Get next reusable connection
    for the key or None"); the pin in pyproject.toml keeps that contract in reach.
    """

    async def _get(self, key: Any, traces: list[Any]) -> Any:
        while (conn := await super()._get(key, traces)) is not None:
            protocol = conn.protocol
            if protocol is not None and not protocol.should_close:
                return conn
            conn.close()
        return None


class UpstreamResponse:
    """One response whose headers arrived. Read it with `read()` or `next_data()`; always `aclose()`."""

    __slots__ = ("_client", "_received", "_resp", "_settled", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, client: UpstreamClient) -> None:
        self._resp = resp
        self._client = client
        self._received = 0
        self._settled = False
        self.status = resp.status
        headers: list[tuple[bytes, bytes]] = []
        for name, value in resp.raw_headers:
            name = name.lower()
            if name == b"content-encoding":
                encoding = value.strip().lower()
                if encoding not in IDENTITY and encoding not in DECODED_ENCODINGS:
                    self.aclose_now()
                    raise UpstreamProtocolError(
                        f"the upstream used a content-encoding the gateway cannot decode: {value.decode('latin-1')!r}"
                    )
                continue  # the body is relayed decoded
            headers.append((name, value))
        self.headers = headers

    async def read(self) -> bytes:
        """The whole (decoded) body, at most `max_response_bytes`."""
        limit = self._client.max_response_bytes
        resp = self._resp
        try:
            length = resp.content_length
            if length is not None and length > limit:
                raise self._too_large()
            if length is not None and resp.headers.get("Content-Encoding") is None:
                data = await resp.read()  # bounded by the declared length
            else:
                parts: list[bytes] = []
                while chunk := await resp.content.readany():
                    self._received += len(chunk)
                    if self._received > limit:
                        raise self._too_large()
                    parts.append(chunk)
                data = b"".join(parts)
        except BaseException as exc:
            self.aclose_now()
            if isinstance(exc, Exception):
                raise translate(exc, self._client) from None
            raise
        self._settle(reuse=True)
        return data

    async def next_data(self) -> bytes | None:
        """Every body byte received since the last call (waiting for some), or None at the end."""
        try:
            data = await self._resp.content.readany()
        except BaseException as exc:
            self.aclose_now()
            if isinstance(exc, Exception):
                raise translate(exc, self._client) from None
            raise
        if not data:
            self._settle(reuse=True)
            return None
        self._received += len(data)
        if self._received > self._client.max_response_bytes:
            self.aclose_now()
            raise self._too_large()
        return data

    def _too_large(self) -> UpstreamTooLarge:
        return UpstreamTooLarge(
            f"the upstream's answer exceeds {self._client.max_response_bytes} bytes "
            "(INFERENCE__MAX_RESPONSE_BYTES)"
        )

    def _settle(self, *, reuse: bool) -> None:
        if self._settled:
            return
        self._settled = True
        if reuse and self._resp.content.is_eof():
            self._resp.release()  # back to the pool (aiohttp closes it if it cannot be reused)
        else:
            # Closing tells the upstream we are gone: it stops generating for us.
            self._resp.close()
        self._client._slot_free()

    def aclose_now(self) -> None:
        """Close the connection: the answer failed or will not be read."""
        self._settle(reuse=False)

    async def aclose(self) -> None:
        """Return the connection to the pool if the body was read to its end, else close it."""
        self._settle(reuse=self._resp.content.is_eof())


class UpstreamClient:
    """Keep-alive connections to one origin (scheme, host, port), at most `max_connections` busy."""

    def __init__(
        self,
        base_url: str,
        outbound: Outbound,
        *,
        max_connections: int = 512,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        pool_timeout: float = 30.0,
        keepalive_expiry: float = 4.0,
        max_response_bytes: int = 32 * 1024 * 1024,
        max_header_bytes: int = 16 * 1024,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported upstream URL {base_url!r}")
        self.host = parts.hostname
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self.max_connections = max_connections
        self.max_response_bytes = max_response_bytes
        proxy = outbound.proxy
        self.proxy_url = proxy.url if proxy is not None else None
        self._proxy_auth = (
            aiohttp.BasicAuth(proxy.username, proxy.password or "")
            if proxy is not None and proxy.username is not None
            else None
        )
        self._slots = asyncio.Semaphore(max_connections)
        connector = _IdleCheckingConnector(
            limit=max_connections,
            limit_per_host=0,
            keepalive_timeout=keepalive_expiry,
            ssl=outbound.ssl,
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # total=None: a long generation is fine; connect covers the pool wait, which the
            # semaphore above bounds already.
            timeout=aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=connect_timeout, sock_read=read_timeout
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # proxy decided by app/outbound.py, the same rule as training's
            auto_decompress=True,
            raise_for_status=False,
            skip_auto_headers=("User-Agent",),
            max_line_size=max_header_bytes,
            max_field_size=max_header_bytes,
            max_headers=128,
        )

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def busy(self) -> int:
        """Requests in flight (each holds a connection)."""
        return self.max_connections - self._slots._value

    async def _slot(self) -> None:
        slots = self._slots
        if not slots.locked():
            await slots.acquire()
            return
        try:
            async with asyncio.timeout(self.pool_timeout):
                await slots.acquire()
        except TimeoutError:
            raise PoolTimeout(
                f"all {self.max_connections} upstream connections stayed busy for {self.pool_timeout:g}s"
            ) from None

    def _slot_free(self) -> None:
        self._slots.release()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Send one POST and return once the response headers arrived (interim 1xx skipped).
        The caller must `aclose()` the response."""
        await self._slot()
        try:
            resp = await self._session.post(
                url,
                data=body,
                headers=headers,
                proxy=self.proxy_url,
                proxy_auth=self._proxy_auth,
                allow_redirects=False,
            )
        except BaseException as exc:
            self._slot_free()
            if isinstance(exc, Exception):
                raise translate(exc, self) from None
            raise
        return UpstreamResponse(resp, self)

    async def aclose(self) -> None:
        """Close every connection; responses still being read fail with UpstreamDisconnected."""
        await self._session.close()
