"""What the client sees when the upstream fails: always OpenAI's error envelope.

| upstream | client gets |
| --- | --- |
| 429 | 429 `rate_limit_error` (upstream code or `rate_limit_exceeded`), `Retry-After` kept |
| 402 | 402 `insufficient_quota` |
| 404 | 404 (upstream code or `model_not_found`) |
| other 4xx | same status, `invalid_request_error`, the upstream's message |
| 401 / 403 | 502 `upstream_auth_failed`: the gateway's W&B key was rejected (the caller's key is fine) |
| 5xx | 502 `upstream_error` |
| connection refused, name not resolved | 502 `upstream_unreachable` |
| closed before a complete answer (mid-body, or while the request was sent) | 502 `upstream_disconnected` |
| not HTTP, headers too long, undecodable content-encoding, not JSON | 502 `upstream_invalid_response` |
| answer above `INFERENCE__MAX_RESPONSE_BYTES` | 502 `upstream_response_too_large` |
| TLS: untrusted certificate, wrong host name, handshake failure (the reason is named) | 502 `upstream_tls_error` |
| the egress proxy refused the tunnel (e.g. 407) or cannot be reached | 502 `upstream_proxy_error` |
| connect or read timeout | 504 `upstream_timeout` |
| every upstream connection busy | 503 `upstream_busy` |

The codes of failures without an HTTP answer come from the client's exceptions
(app/gateway/upstream.py, `UpstreamError.code`).

Upstream messages are relayed (truncated) with the W&B key scrubbed out, should an upstream
ever echo it.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.errors import AppError
from app.gateway.upstream import PoolTimeout, UpstreamError, UpstreamTimeout

MAX_MESSAGE = 1000

# Hop-by-hop headers (RFC 9110 §7.6.1) and headers this server sets itself: never relayed.
NOT_RELAYED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"date",
        b"server",
        b"set-cookie",
        b"www-authenticate",
        b"x-request-id",
        b"alt-svc",
    }
)
# Relayed with error responses too: they tell the client when to come back.
RETRY_HEADERS = (b"retry-after", b"retry-after-ms")


class GatewayUpstreamError(AppError):
    """An upstream failure rendered in the envelope with the status chosen by the table above."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param, headers=headers, status_code=status, type_=type_)


def relayed_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus hop-by-hop ones (including those `Connection` names)."""
    extra: set[bytes] = set()
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == b"connection":
            extra.update(token.strip().lower() for token in value.split(b","))
        elif name not in NOT_RELAYED:
            out.append((name, value))
    if extra:
        out = [(n, v) for n, v in out if n not in extra]
    return out


def _retry_headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name, value in headers:
        if name in RETRY_HEADERS or name.startswith(b"x-ratelimit-"):
            kept[name.decode("latin-1")] = value.decode("latin-1")
    return kept


def _scrub(text: str, secret: str | None) -> str:
    if secret and secret in text:
        text = text.replace(secret, "***")
    return text[:MAX_MESSAGE]


def _upstream_error_fields(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(message, code, param) from whatever error body the upstream sent."""
    try:
        doc: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text or None), None, None
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            param = error.get("param")
            return (
                str(error.get("message") or "") or None,
                str(code) if code is not None else None,
                str(param) if param is not None else None,
            )
        if isinstance(error, str):
            return error, None, None
        detail = doc.get("detail")
        if isinstance(detail, str):
            return detail, None, None
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            first = detail[0]
            loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
            return f"{loc}: {first.get('msg')}" if loc else str(first.get("msg")), None, loc
        if isinstance(doc.get("message"), str):
            return doc["message"], None, None
    return None, None, None


def from_upstream_status(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, secret: str | None, key_configured: bool
) -> GatewayUpstreamError:
    message, code, param = _upstream_error_fields(body)
    message = _scrub(message, secret) if message else None
    keep = _retry_headers(headers)
    if status in (401, 403):
        hint = (
            "check WANDB_API_KEY and WANDB_ENTITY/WANDB_PROJECT"
            if key_configured
            else "no WANDB_API_KEY is configured on the gateway"
        )
        return GatewayUpstreamError(
            502,
            "upstream_error",
            f"The upstream rejected the gateway's W&B credentials (HTTP {status}); {hint}.",
            code="upstream_auth_failed",
        )
    if status == 429:
        return GatewayUpstreamError(
            429,
            "rate_limit_error",
            message or "The upstream is rate limiting requests; retry later.",
            code=code or "rate_limit_exceeded",
            headers=keep,
        )
    if status == 402:
        return GatewayUpstreamError(
            402,
            "insufficient_quota",
            message or "The W&B account behind the gateway exceeded its quota.",
            code="insufficient_quota",
            headers=keep,
        )
    if status == 404:
        return GatewayUpstreamError(
            404,
            "invalid_request_error",
            message or "The upstream does not know this model.",
            code=code or "model_not_found",
            param=param or "model",
        )
    if 400 <= status < 500:
        return GatewayUpstreamError(
            status,
            "invalid_request_error",
            message or f"The upstream rejected the request (HTTP {status}).",
            code=code or "upstream_rejected",
            param=param,
            headers=keep,
        )
    if status >= 500:
        detail = f": {message}" if message else ""
        return GatewayUpstreamError(
            502,
            "upstream_error",
            f"The upstream failed with HTTP {status}{detail}",
            code="upstream_error",
            headers=keep,
        )
    return GatewayUpstreamError(
        502,
        "upstream_error",
        f"The upstream answered with an unexpected HTTP {status}.",
        code="upstream_invalid_response",
    )


def from_upstream_exception(exc: UpstreamError) -> GatewayUpstreamError:
    if isinstance(exc, UpstreamTimeout):
        return GatewayUpstreamError(504, "upstream_error", str(exc), code=exc.code)
    if isinstance(exc, PoolTimeout):
        return GatewayUpstreamError(
            503, "server_error", str(exc), code=exc.code, headers={"Retry-After": "1"}
        )
    return GatewayUpstreamError(502, "upstream_error", str(exc), code=exc.code)


def invalid_upstream_body(detail: str) -> GatewayUpstreamError:
    return GatewayUpstreamError(
        502,
        "upstream_error",
        f"The upstream sent an invalid response: {detail}",
        code="upstream_invalid_response",
    )
