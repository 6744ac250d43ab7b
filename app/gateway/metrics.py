"""Prometheus collectors of the gateway, registered on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from app.gateway.writer import WriterMetrics

OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time the gateway itself adds to a chat completion (total minus waiting for the upstream).",
            ["stream"],
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.upstream = Histogram(
            "gateway_upstream_seconds",
            "Upstream time of a chat completion: to the last byte (non-streaming) or the headers (streaming).",
            ["stream"],
            buckets=UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Chat completions that failed upstream, by the code the client got.",
            ["code"],
            registry=registry,
        )
        self.tokens = Counter(
            "gateway_tokens_total", "Tokens reported by the upstream.", ["kind"], registry=registry
        )
        self.captures = Counter(
            "gateway_captures_total",
            "Completions queued for capture (metadata.trajectory_id).",
            registry=registry,
        )
        self.fallbacks = Counter(
            "gateway_fallbacks_total",
            "Requests served by the base model because the requested checkpoint is gone.",
            registry=registry,
        )
        self.client_disconnects = Counter(
            "gateway_client_disconnects_total",
            "Chat completions abandoned by the client (the upstream request was cancelled).",
            registry=registry,
        )
        # Per API key (its name, never the secret): what `GET /v1/usage` reports, as counters.
        self.key_requests = Counter(
            "gateway_key_requests_total", "Chat completions by API key name.", ["key"], registry=registry
        )
        self.key_errors = Counter(
            "gateway_key_errors_total",
            "Chat completions that ended in an error (status >= 400), by API key name.",
            ["key"],
            registry=registry,
        )
        self.key_tokens = Counter(
            "gateway_key_tokens_total",
            "Tokens reported by the upstream, by API key name and kind (prompt, completion).",
            ["key", "kind"],
            registry=registry,
        )
        self._per_key: dict[str, tuple[Counter, Counter, Counter, Counter]] = {}
        self.writer = WriterMetrics(registry)
        # children resolved once: labels() costs a dict lookup and a lock per call
        self.overhead_stream = self.overhead.labels("true")
        self.overhead_plain = self.overhead.labels("false")
        self.upstream_stream = self.upstream.labels("true")
        self.upstream_plain = self.upstream.labels("false")
        self.prompt_tokens = self.tokens.labels("prompt")
        self.completion_tokens = self.tokens.labels("completion")

    def count_key(self, key: str, prompt: int | None, completion: int | None, error: bool) -> None:
        children = self._per_key.get(key)
        if children is None:
            if len(self._per_key) >= 10_000:  # label children are cached, never unbounded
                self._per_key.clear()
            children = (
                self.key_requests.labels(key),
                self.key_errors.labels(key),
                self.key_tokens.labels(key, "prompt"),
                self.key_tokens.labels(key, "completion"),
            )
            self._per_key[key] = children
        children[0].inc()
        if error:
            children[1].inc()
        if prompt:
            children[2].inc(prompt)
        if completion:
            children[3].inc(completion)
