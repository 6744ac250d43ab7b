"""Prometheus metrics of the step protocol: W&B calls, step durations and the service's own time.

The service's *overhead* in a phase of a step is the phase's wall time minus the time it spent
waiting: for W&B's answers and in poll sleeps. With W&B answering at once (the emulator at
pace 0) it is what the service adds to each step (bench/jobs).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# fine at the low end: the overhead budget is tens of milliseconds per step
OVERHEAD_BUCKETS = (0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 600.0)


class TrainingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.wandb_calls = Counter(
            "wandb_calls_total",
            "W&B Training API calls by route and outcome (ok, unavailable, rate_limited, rejected, interrupted).",
            ["route", "outcome"],
            registry=registry,
        )
        self.wandb_seconds = Histogram(
            "wandb_call_duration_seconds",
            "Latency of W&B Training API calls by route.",
            ["route"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.step_seconds = Histogram(
            "job_step_duration_seconds",
            "Wall time of a training step, from its start until its checkpoint is recorded.",
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.overhead_seconds = Histogram(
            "job_step_overhead_seconds",
            "The service's own time in a step, by phase (submit, events, checkpoint, and the whole step): "
            "wall time minus the time spent waiting for W&B and in poll sleeps.",
            ["phase"],
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.steps = Counter(
            "job_steps_total", "Training steps by final status.", ["status"], registry=registry
        )
        self.jobs_finished = Counter(
            "jobs_finished_total", "Jobs this process ended, by final status.", ["status"], registry=registry
        )
