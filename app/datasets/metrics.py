"""Prometheus metrics of dataset builds (on the app's registry, created on first use)."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import Counter, Histogram

from app.datasets.models import Dataset
from app.state import app_state

BUILD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class DatasetMetrics:
    def __init__(self, app: FastAPI) -> None:
        registry = app_state(app).metrics.registry
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


def dataset_metrics(app: FastAPI) -> DatasetMetrics:
    existing: DatasetMetrics | None = app_state(app).dataset_metrics
    if existing is None:
        existing = DatasetMetrics(app)
        app_state(app).dataset_metrics = existing
    return existing
