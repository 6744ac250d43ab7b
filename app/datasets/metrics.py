"""Prometheus metrics of dataset builds (observed by the worker that ran the build)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from app.datasets.models import Dataset

BUILD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class DatasetMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.builds = Counter(
            "dataset_builds_total",
            "Dataset builds by source and final status.",
            ["source", "status"],
            registry=registry,
        )
        self.rows = Counter(
            "dataset_rows_total",
            "Game or pushed rows seen by dataset builds, by outcome (used, ignored, rejected).",
            ["outcome"],
            registry=registry,
        )
        self.seconds = Histogram(
            "dataset_build_duration_seconds",
            "Wall time of dataset builds.",
            ["source"],
            buckets=BUILD_BUCKETS,
            registry=registry,
        )

    def observe(self, dataset: Dataset) -> None:
        self.builds.labels(dataset.source, dataset.status).inc()
        rows = (dataset.stats or {}).get("rows") or {}
        for outcome in ("used", "ignored", "rejected"):
            if rows.get(outcome):
                self.rows.labels(outcome).inc(rows[outcome])
        duration = (dataset.stats or {}).get("duration_s")
        if isinstance(duration, (int, float)):
            self.seconds.labels(dataset.source).observe(duration)
