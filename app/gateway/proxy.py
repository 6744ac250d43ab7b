"""The chat-completions proxy: request → resolved model → upstream → answer, capture, log.

Hot-path rules (see bench/proxy/README.md for what they buy):
- one parse of the request JSON (orjson), one serialisation of the upstream body, no pydantic;
- non-streamed answers are parsed once (usage, capture), re-serialised only when logprobs the
  caller did not ask for must go;
- streamed answers are relayed as they arrive; only a captured stream is parsed, event by event;
- captures and the request log are appended to in-memory buffers (app/gateway/writer.py),
  and, before the answer completes (a stream: before its [DONE] is sent), to the spool file
  (app/gateway/spool.py: one write(2) per row) so that a kill -9 loses none of them;
- the client's disconnect cancels the upstream request (a watcher task cancels this one, and the
  upstream connection is aborted rather than returned to the pool).

The W&B key: when `WANDB_API_KEY` is set it is sent as `Authorization: Bearer …` to the upstream
and nowhere else; when it is not set (development against the emulator) no Authorization header
is sent at all rather than a made-up one, and an upstream that insists answers 401, which the
client sees as 502 `upstream_auth_failed` saying the key is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.errors import BadRequest, render_error
from app.gateway.capture import CaptureTarget, StreamAssembler, capture_row, parse_metadata, strip_logprobs
from app.gateway.metrics import GatewayMetrics
from app.gateway.models import new_request_log_id
from app.gateway.upstream import UpstreamClient, UpstreamError, UpstreamResponse
from app.gateway.upstream_errors import (
    GatewayUpstreamError,
    from_upstream_exception,
    from_upstream_status,
    invalid_upstream_body,
    relayed_headers,
)
from app.gateway.writer import BatchWriter
from app.keys.ratelimit import RateLimiter
from app.keys.service import Principal
from app.logs import current_request_id
from app.registry.resolution import (
    ModelResolver,
    Resolution,
    RolloutSplit,
    base_model_upstream_name,
    check_access,
)
from app.registry.service import model_not_found

logger = logging.getLogger(__name__)

OVERHEAD_HEADER = b"x-gateway-overhead-ms"
SERVED_MODEL_HEADER = b"x-gateway-served-model"
FALLBACK_HEADER = b"x-gateway-fallback"
CLIENT_CLOSED_STATUS = 499  # nginx's "client closed request", only ever seen in the request log
MAX_ERROR_BODY = 64 * 1024
_SSE_HEADERS = [(b"x-accel-buffering", b"no")]


@dataclass(slots=True)
class GatewayCall:
    """What one gateway request did, filled in as it goes; becomes its request-log row."""

    start: float
    route: str
    key_id: str | None = None
    principal: Principal | None = None
    rate_headers: list[tuple[bytes, bytes]] | None = None  # x-ratelimit-* of a limited key
    model_requested: str | None = None
    model_served: str | None = None
    fallback: bool = False
    stream: bool = False
    upstream_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    trajectory_id: str | None = None
    error_code: str | None = None
    # client-disconnect handling (chat completions only)
    task: asyncio.Task[Any] | None = None
    watcher: asyncio.Task[None] | None = None
    finished: bool = False
    client_gone: bool = False

    def overhead_ms(self, now: float) -> float:
        return max(0.0, (now - self.start - self.upstream_s) * 1000.0)

    def response_headers(self, now: float) -> list[tuple[bytes, bytes]]:
        headers = [(OVERHEAD_HEADER, b"%.3f" % self.overhead_ms(now))]
        if self.model_served is not None:
            headers.append((SERVED_MODEL_HEADER, self.model_served.encode("utf-8", "replace")))
        if self.fallback:
            headers.append((FALLBACK_HEADER, b"base_model"))
        if self.rate_headers:
            headers.extend(self.rate_headers)
        return headers

    def take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            self.prompt_tokens = prompt if isinstance(prompt, int) else None
            self.completion_tokens = completion if isinstance(completion, int) else None


class RawResponse(Response):
    """A response whose headers are already in ASGI form (skips Starlette's header building)."""

    def __init__(self, body: bytes, status_code: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.body = body
        self.status_code = status_code
        self.background = None
        self.raw_headers = [*headers, (b"content-length", b"%d" % len(body))]


class ClientClosed(Response):
    """Returned when the client went away: nothing is sent (nobody is listening)."""

    def __init__(self) -> None:
        self.status_code = CLIENT_CLOSED_STATUS
        self.background = None
        self.raw_headers = []
        self.body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to treat one chat completion, decided from the request."""

    stream: bool
    capture: CaptureTarget | None
    strip_logprobs: bool  # the gateway asked for logprobs the caller did not
    drop_usage_chunk: bool  # the gateway asked for stream usage the caller did not
    want_usage: bool  # the stream will carry a usage chunk


class Gateway:
    """Per-process state of the gateway and the chat-completion flow."""

    def __init__(
        self,
        settings: Settings,
        upstream: UpstreamClient,
        resolver: ModelResolver,
        metrics: GatewayMetrics,
        captures: BatchWriter,
        request_log: BatchWriter | None,
        limiter: RateLimiter,
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.inference = settings.inference
        self.upstream = upstream
        self.resolver = resolver
        self.metrics = metrics
        self.captures = captures
        self.request_log = request_log
        key = settings.wandb_api_key.get_secret_value() if settings.wandb_api_key is not None else None
        self._secret = key or None
        self._url = upstream.url("/chat/completions")
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "User-Agent": "training-control-gateway",
        }
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # Compressed answers save bandwidth on long logprobs; streams ask for none, so that no
        # proxy or server buffers events to compress them.
        self._headers_plain = {**headers, "Accept-Encoding": "gzip, br"}
        self._headers_stream = {**headers, "Accept-Encoding": "identity"}

    # ------------------------------------------------------------------ request log
    def log_request(self, call: GatewayCall, status: int, now: float) -> None:
        overhead = self.metrics.overhead_stream if call.stream else self.metrics.overhead_plain
        overhead.observe(call.overhead_ms(now) / 1000.0)
        if call.prompt_tokens:
            self.metrics.prompt_tokens.inc(call.prompt_tokens)
        if call.completion_tokens:
            self.metrics.completion_tokens.inc(call.completion_tokens)
        if call.error_code is not None and status >= 500:
            self.metrics.upstream_errors.labels(call.error_code).inc()
        principal = call.principal
        if principal is not None:
            tokens = (call.prompt_tokens or 0) + (call.completion_tokens or 0)
            if principal.tpm is not None:
                self.limiter.charge(principal, tokens)
            self.metrics.count_key(principal.name, call.prompt_tokens, call.completion_tokens, status >= 400)
        if self.request_log is None:
            return
        self.request_log.put(
            {
                "id": new_request_log_id(),
                "created_at": dt.datetime.now(dt.UTC),
                "request_id": current_request_id(),
                "key_id": call.key_id,
                "route": call.route,
                "model_requested": call.model_requested[:500] if call.model_requested else None,
                "model_served": call.model_served[:500] if call.model_served else None,
                "stream": call.stream,
                "status_code": status,
                "error_code": call.error_code[:64] if call.error_code else None,
                "latency_ms": round((now - call.start) * 1000.0, 3),
                "overhead_ms": round(call.overhead_ms(now), 3),
                "prompt_tokens": call.prompt_tokens,
                "completion_tokens": call.completion_tokens,
                "trajectory_id": call.trajectory_id,
            }
        )

    # ------------------------------------------------------------------ chat completions
    async def chat_completions(self, request: Request, call: GatewayCall) -> Response:
        payload = _parse_body(await request.body())
        model, plan = self._plan(payload)
        call.model_requested = model
        call.stream = plan.stream
        if plan.capture is not None:
            call.trajectory_id = plan.capture.trajectory_id
        resolution = await self.resolver.resolve(model)
        if call.principal is not None:
            check_access(call.principal.models, resolution)
        if resolution.split is not None:
            # after the access check: both arms are checkpoints of the same model line
            resolution = _rollout_arm(resolution, resolution.split, plan, payload)
        served = resolution.upstream_model
        if resolution.deleted:
            if not (resolution.fallback and resolution.base_model):
                raise model_not_found(
                    model, f"checkpoint {resolution.checkpoint_id} (step {resolution.step}) was deleted"
                )
            served = base_model_upstream_name(resolution.base_model)
            call.fallback = True
        call.model_served = served

        self._watch_disconnect(request.receive, call)
        try:
            upstream = await self._send(payload, served, plan, call)
            if upstream.status == 404 and self._may_fall_back(resolution, call):
                await upstream.aclose()
                assert resolution.base_model is not None
                # the same name as for the base model asked for directly (resolution.py)
                call.model_served = base_model_upstream_name(resolution.base_model)
                call.fallback = True
                upstream = await self._send(payload, call.model_served, plan, call)
            if call.fallback:
                self.metrics.fallbacks.inc()
                logger.info(
                    "gateway.fallback requested=%s served=%s", resolution.requested, call.model_served
                )
            if not 200 <= upstream.status < 300:
                raise await self._upstream_failure(upstream, call)
            if plan.stream:
                self.metrics.upstream_stream.observe(call.upstream_s)
                return StreamRelay(self, upstream, call, plan, payload)
            try:
                t_body = time.perf_counter()
                data = await upstream.read()
                call.upstream_s += time.perf_counter() - t_body
            except UpstreamError as exc:
                raise self._exception_failure(exc, call) from None
            finally:
                await upstream.aclose()
            call.finished = True
            self._stop_watcher(call)
        except asyncio.CancelledError:
            if not self._absorb_client_gone(call):
                raise
            return ClientClosed()
        except BaseException:
            call.finished = True
            self._stop_watcher(call)
            raise
        self.metrics.upstream_plain.observe(call.upstream_s)
        return self._complete(data, upstream, call, plan, payload)

    def _plan(self, payload: dict[str, Any]) -> tuple[str, _Plan]:
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model is required and must be a non-empty string", param="model")
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages is required and must be a non-empty array", param="messages")
        stream = payload.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise BadRequest("stream must be a boolean", param="stream")
        target = parse_metadata(payload.get("metadata"))
        stream = bool(stream)
        stream_options = payload.get("stream_options")
        caller_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
        capture = target is not None
        return model, _Plan(
            stream=stream,
            capture=target,
            strip_logprobs=capture and not payload.get("logprobs"),
            drop_usage_chunk=capture and stream and not caller_usage,
            want_usage=stream and (caller_usage or capture),
        )

    def _upstream_body(self, payload: dict[str, Any], served: str, plan: _Plan) -> bytes:
        body = dict(payload)
        body["model"] = served
        body.pop("metadata", None)  # ours, never the upstream's
        if plan.capture is not None:
            body["logprobs"] = True
            if (
                plan.strip_logprobs
                and self.inference.capture_token_ids
                and "return_tokens_as_token_ids" not in payload
            ):
                body["return_tokens_as_token_ids"] = True
            if plan.drop_usage_chunk:
                options = payload.get("stream_options")
                body["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
        return orjson.dumps(body)

    async def _send(
        self, payload: dict[str, Any], served: str, plan: _Plan, call: GatewayCall
    ) -> UpstreamResponse:
        body = self._upstream_body(payload, served, plan)
        headers = dict(self._headers_stream if plan.stream else self._headers_plain)
        headers["X-Request-Id"] = current_request_id() or "-"
        t0 = time.perf_counter()
        try:
            return await self.upstream.post(self._url, body, headers)
        except UpstreamError as exc:
            raise self._exception_failure(exc, call) from None
        finally:
            call.upstream_s += time.perf_counter() - t0

    def _may_fall_back(self, resolution: Resolution, call: GatewayCall) -> bool:
        return (
            not call.fallback
            and resolution.fallback
            and resolution.base_model is not None
            and not resolution.is_base_model
        )

    def _exception_failure(self, exc: UpstreamError, call: GatewayCall) -> GatewayUpstreamError:
        failure = from_upstream_exception(exc)
        call.error_code = failure.code
        logger.warning(
            "gateway.upstream_failed code=%s model=%s error=%s", failure.code, call.model_served, exc
        )
        return failure

    async def _upstream_failure(self, upstream: UpstreamResponse, call: GatewayCall) -> GatewayUpstreamError:
        try:
            t0 = time.perf_counter()
            body = await upstream.read()
            call.upstream_s += time.perf_counter() - t0
        except UpstreamError:
            body = b""
        finally:
            await upstream.aclose()
        failure = from_upstream_status(
            upstream.status,
            upstream.headers,
            body[:MAX_ERROR_BODY],
            secret=self._secret,
            key_configured=self._secret is not None,
        )
        call.error_code = failure.code
        logger.warning(
            "gateway.upstream_status status=%s code=%s model=%s",
            upstream.status,
            failure.code,
            call.model_served,
        )
        return failure

    def _complete(
        self, data: bytes, upstream: UpstreamResponse, call: GatewayCall, plan: _Plan, payload: dict[str, Any]
    ) -> Response:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            # The SDK could not parse it either; say where the fault lies.
            call.error_code = "upstream_invalid_response"
            raise invalid_upstream_body("the completion is not a JSON object")
        call.take_usage(doc.get("usage"))
        if plan.capture is not None:
            choices = doc.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                self._capture(plan.capture, call, payload, choices[0], doc.get("usage"))
            else:
                logger.warning("gateway.capture_skipped reason=no_choice model=%s", call.model_served)
            if plan.strip_logprobs:
                strip_logprobs(choices)
                data = orjson.dumps(doc)
        return RawResponse(data, upstream.status, relayed_headers(upstream.headers))

    def _capture(
        self,
        target: CaptureTarget,
        call: GatewayCall,
        payload: dict[str, Any],
        choice: dict[str, Any],
        usage: Any,
    ) -> None:
        assert call.model_requested is not None
        assert call.model_served is not None
        row = capture_row(
            target,
            requested_model=call.model_requested,
            upstream_model=call.model_served,
            messages=payload["messages"],
            tools=payload.get("tools"),
            # the caller's answer may still be edited (logprobs stripped): a deep copy, unless
            # the writer serialises the row at once (its spool line is the snapshot)
            choice=choice if self.captures.snapshots else orjson.loads(orjson.dumps(choice)),
            usage=usage,
            latency_ms=(time.perf_counter() - call.start) * 1000.0,
        )
        if self.captures.put(row):
            self.metrics.captures.inc()

    # ------------------------------------------------------------------ client disconnects
    def _watch_disconnect(self, receive: Receive, call: GatewayCall) -> None:
        call.task = asyncio.current_task()
        call.watcher = asyncio.get_running_loop().create_task(_wait_for_disconnect(receive, call))

    @staticmethod
    def _stop_watcher(call: GatewayCall) -> None:
        if call.watcher is not None:
            call.watcher.cancel()
            call.watcher = None

    def _absorb_client_gone(self, call: GatewayCall) -> bool:
        """After a CancelledError: True if it was our own cancellation for a gone client."""
        call.finished = True
        self._stop_watcher(call)
        if not call.client_gone:
            return False
        task = call.task
        if task is not None and task.uncancel() > 0:
            return False  # cancelled for another reason too (shutdown): let it propagate
        call.error_code = "client_disconnected"
        self.metrics.client_disconnects.inc()
        logger.info("gateway.client_disconnected model=%s stream=%s", call.model_served, call.stream)
        return True


async def _wait_for_disconnect(receive: Receive, call: GatewayCall) -> None:
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
    except Exception:  # a server that cannot tell us: nothing to watch
        return
    if not call.finished and call.task is not None:
        call.client_gone = True
        call.task.cancel()


def _rollout_arm(
    resolution: Resolution, split: RolloutSplit, plan: _Plan, payload: dict[str, Any]
) -> Resolution:
    """The arm of a running rollout this request takes (sticky by trajectory, then agent)."""
    target = plan.capture
    if target is not None:
        takes = split.takes(target.trajectory_id, target.agent_id)
    else:
        metadata = payload.get("metadata")
        agent = metadata.get("agent_id") if isinstance(metadata, dict) else None
        takes = split.takes(None, agent if isinstance(agent, str) else None)
    return split.candidate if takes else resolution


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return payload


class StreamRelay(Response):
    """Relays an upstream SSE stream to the client as it arrives; logs and captures at its end."""

    def __init__(
        self,
        gateway: Gateway,
        upstream: UpstreamResponse,
        call: GatewayCall,
        plan: _Plan,
        payload: dict[str, Any],
    ) -> None:
        self.gateway = gateway
        self.upstream = upstream
        self.call = call
        self.plan = plan
        self.payload = payload
        self.status_code = 200
        self.background = None
        self.raw_headers = [*relayed_headers(upstream.headers), *_SSE_HEADERS]
        self.assembler = StreamAssembler() if plan.capture is not None else None
        self._pending = b""
        self._tail = b""
        self._settled = False  # captured and logged (at [DONE], or at the end)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = self.call
        gateway = self.gateway
        upstream = self.upstream
        status = CLIENT_CLOSED_STATUS  # unless the stream reaches its end
        try:
            now = time.perf_counter()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": self.raw_headers + call.response_headers(now),
                }
            )
            transform = self._transform if self.assembler is not None else self._whole_events
            want_tail = self.plan.want_usage and self.assembler is None
            last_out = b""
            while True:
                t0 = time.perf_counter()
                try:
                    data = await upstream.next_data()
                except UpstreamError as exc:
                    call.upstream_s += time.perf_counter() - t0
                    if b"[DONE]" in last_out[-32:]:
                        # the answer was complete; only the transport's end was broken
                        logger.warning("gateway.stream_end_broken model=%s error=%s", call.model_served, exc)
                    else:
                        await self._send_stream_error(send, exc)
                    break
                call.upstream_s += time.perf_counter() - t0
                if data is None:
                    if self._pending:
                        rest = self._transform(b"\n\n") if self.assembler is not None else self._pending
                        if rest:
                            await send({"type": "http.response.body", "body": rest, "more_body": True})
                    break
                if want_tail:
                    self._tail = (self._tail + data)[-8192:]
                out = transform(data)
                if out:
                    last_out = out
                    if not self._settled and b"[DONE]" in out[-32:]:
                        # capture and log (spooled) before the client sees the answer complete
                        self._finish(200)
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            call.finished = True
            gateway._stop_watcher(call)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            status = 200
        except asyncio.CancelledError:
            if not gateway._absorb_client_gone(call):
                call.error_code = call.error_code or "cancelled"
                raise
        except OSError:
            # Servers on ASGI spec >= 2.4 raise from send() once the client is gone.
            call.error_code = "client_disconnected"
            gateway.metrics.client_disconnects.inc()
        finally:
            call.finished = True
            gateway._stop_watcher(call)
            await upstream.aclose()
            if not self._settled:
                self._finish(status)

    async def _send_stream_error(self, send: Send, exc: UpstreamError) -> None:
        # Headers are gone already: the error travels as an SSE event, which the openai SDK
        # raises as APIError; no [DONE] follows.
        failure = from_upstream_exception(exc)
        self.call.error_code = failure.code
        logger.warning(
            "gateway.stream_failed code=%s model=%s error=%s", failure.code, self.call.model_served, exc
        )
        event = b"data: " + render_error(failure) + b"\n\n"
        await send({"type": "http.response.body", "body": event, "more_body": True})

    def _whole_events(self, data: bytes) -> bytes:
        """Uncaptured streams: relay the bytes as they come, but only up to the last complete
        SSE event, so that an error event never lands inside a half-relayed one."""
        if not self._pending and data.endswith(b"\n\n"):
            return data  # the common case: whole events
        buffer = self._pending + data
        cut = 0
        for end in (b"\n\n", b"\r\n\r\n", b"\r\r"):
            at = buffer.rfind(end)
            if at >= 0:
                cut = max(cut, at + len(end))
        self._pending = buffer[cut:]
        return buffer[:cut]

    def _transform(self, data: bytes) -> bytes:
        """Captured streams: feed each complete SSE event to the assembler, strip what the
        gateway added, and pass the events on."""
        buffer = self._pending + data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        events = buffer.split(b"\n\n")
        self._pending = events.pop()
        if not events:
            return b""
        return b"".join(self._event(event) for event in events if event)

    def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data:"):
            return event + b"\n\n"
        data = event[5:].strip()
        if data == b"[DONE]" or not data.startswith(b"{"):
            return event + b"\n\n"
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return event + b"\n\n"
        if not isinstance(chunk, dict) or "choices" not in chunk:
            return event + b"\n\n"
        assert self.assembler is not None
        self.assembler.add(chunk)
        changed = False
        if self.plan.drop_usage_chunk:
            if not chunk.get("choices") and chunk.get("usage"):
                return b""  # the usage-only chunk the caller did not ask for
            if "usage" in chunk:
                del chunk["usage"]
                changed = True
        if self.plan.strip_logprobs:
            for choice in chunk["choices"]:
                if isinstance(choice, dict) and choice.get("logprobs") is not None:
                    choice["logprobs"] = None
                    changed = True
        if not changed:
            return event + b"\n\n"
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def _finish(self, status: int) -> None:
        self._settled = True
        call = self.call
        gateway = self.gateway
        assembler = self.assembler
        if assembler is not None:
            call.take_usage(assembler.usage)
            if assembler.finished and call.error_code is None and self.plan.capture is not None:
                gateway._capture(self.plan.capture, call, self.payload, assembler.choice(), assembler.usage)
            elif status == 200 and call.error_code is None:
                logger.warning("gateway.capture_skipped reason=stream_without_finish_reason")
        elif self._tail:
            call.take_usage(_usage_from_tail(self._tail))
        gateway.log_request(call, status, time.perf_counter())


def _usage_from_tail(tail: bytes) -> Any:
    for event in reversed(tail.replace(b"\r\n", b"\n").split(b"\n\n")):
        if event.startswith(b"data: {") and b'"usage"' in event:
            with contextlib.suppress(orjson.JSONDecodeError):
                doc = orjson.loads(event[6:])
                if isinstance(doc, dict) and isinstance(doc.get("usage"), dict):
                    return doc["usage"]
    return None
