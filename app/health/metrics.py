"""Prometheus metrics, one registry per app so tests can build many apps in one process."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Holds the registry and the service-wide collectors; features add theirs to `registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Resolving labels costs a dict lookup per call; cache the children.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(route, method, str(status)),
                self.http_latency.labels(route, method, str(status)),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def watch_engine(self, engine_getter: Callable[[], AsyncEngine | None]) -> None:
        self.registry.register(_PoolCollector(engine_getter))

    def add_refresher(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run `refresh` before each scrape (gauges read from the database)."""
        self._refreshers.append(refresh)

    async def refresh(self) -> None:
        for refresh in self._refreshers:
            try:
                await refresh()
            except Exception as exc:  # a scrape still answers with what it has
                logger.warning("metrics.refresh_failed error=%s", type(exc).__name__)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector(Collector):
    def __init__(self, engine_getter: Callable[[], AsyncEngine | None]) -> None:
        self._engine_getter = engine_getter

    def collect(self) -> Iterable[GaugeMetricFamily]:
        engine = self._engine_getter()
        if engine is None:
            return
        pool = engine.sync_engine.pool
        stats = {
            "db_pool_size": ("configured pool size", getattr(pool, "size", None)),
            "db_pool_checked_out": ("connections in use", getattr(pool, "checkedout", None)),
            "db_pool_checked_in": ("idle connections in the pool", getattr(pool, "checkedin", None)),
            "db_pool_overflow": ("connections beyond pool_size", getattr(pool, "overflow", None)),
        }
        for name, (doc, fn) in stats.items():
            if callable(fn):
                yield GaugeMetricFamily(name, doc, value=float(fn()))
