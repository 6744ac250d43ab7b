"""Injected faults: what a route does instead of (or after) answering normally.

A fault targets one route key (see `ROUTE_KEYS`) and fires for `times` matching requests
(`None` = every one) after letting `skip` of them through untouched.

Transport faults, applied around the route by the middleware:
  status              answer `status` with `{"detail": detail}` (429 adds `Retry-After: retry_after`)
  hang                sleep `seconds`, then answer normally (a client with a shorter timeout gives up)
  drop                close the connection without any response; with `after_chunks=N` the
                      response starts and N body messages (e.g. SSE chunks) go out first
  accept_then_status  run the route (a training job IS created), then answer `status` instead
  accept_then_drop    run the route, then close the connection without a response

Job faults, only on "training_jobs.create"; the POST succeeds and the job misbehaves:
  training_failed     after `after_steps` gradient steps the job emits `training_failed {error_message}`
  stall               the job emits `training_started` and then nothing, ever
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

ROUTE_KEYS: frozenset[str] = frozenset(
    {
        "health",
        "models.create",
        "models.delete",
        "models.log",
        "base_models.list",
        "checkpoints.list",
        "checkpoints.delete",
        "training_jobs.create",
        "training_jobs.get",
        "events",
        "chat",
    }
)

FaultKind = Literal[
    "status", "hang", "drop", "accept_then_status", "accept_then_drop", "training_failed", "stall"
]
TRANSPORT_KINDS: frozenset[str] = frozenset(
    {"status", "hang", "drop", "accept_then_status", "accept_then_drop"}
)
JOB_KINDS: frozenset[str] = frozenset({"training_failed", "stall"})

_DEFAULT_DETAIL = {
    401: "Invalid API key",
    402: "You exceeded your current quota, please check your plan and billing details.",
    403: "Forbidden",
    404: "Not found",
    408: "Request timeout",
    409: "Conflict",
    429: "Concurrency limit reached for requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}

_OPTIONS: dict[str, frozenset[str]] = {
    "status": frozenset({"status", "detail", "retry_after"}),
    "hang": frozenset({"seconds"}),
    "drop": frozenset({"after_chunks"}),
    "accept_then_status": frozenset({"status", "detail", "retry_after"}),
    "accept_then_drop": frozenset(),
    "training_failed": frozenset({"error_message", "after_steps", "model"}),
    "stall": frozenset({"model"}),
}


@dataclass
class Fault:
    route: str
    kind: str
    times: int | None = 1
    skip: int = 0
    status: int = 503
    detail: str | None = None
    retry_after: float | None = None
    seconds: float = 30.0
    after_chunks: int | None = None
    error_message: str = "Emulated training failure"
    after_steps: int = 0
    model: str | None = None  # job faults only: the model name it applies to
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    fired: int = 0
    seen: int = 0
    generation: int = 0  # the emulator's reset generation when it last fired

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def response_detail(self) -> str:
        return self.detail or _DEFAULT_DETAIL.get(self.status, "Emulated error")

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "route": self.route,
            "kind": self.kind,
            "times": self.times,
            "skip": self.skip,
            "fired": self.fired,
            "status": self.status,
            "detail": self.response_detail(),
            "retry_after": self.retry_after,
            "seconds": self.seconds,
            "after_chunks": self.after_chunks,
            "error_message": self.error_message,
            "after_steps": self.after_steps,
            "model": self.model,
        }


def build_fault(route: str, kind: str, *, times: int | None = 1, skip: int = 0, **opts: Any) -> Fault:
    """Validate and build a fault; raises ValueError naming what is wrong."""
    if route not in ROUTE_KEYS:
        raise ValueError(f"unknown route {route!r}; expected one of {sorted(ROUTE_KEYS)}")
    if kind not in _OPTIONS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(_OPTIONS)}")
    if kind in JOB_KINDS and route != "training_jobs.create":
        raise ValueError(f"fault kind {kind!r} applies only to route 'training_jobs.create'")
    unknown = sorted(set(opts) - _OPTIONS[kind])
    if unknown:
        raise ValueError(f"option(s) {unknown} do not apply to fault kind {kind!r}")
    if times is not None and times < 1:
        raise ValueError("times must be >= 1, or None for every request")
    if skip < 0:
        raise ValueError("skip must be >= 0")
    status = opts.get("status", 503)
    if not isinstance(status, int) or not 400 <= status <= 599:
        raise ValueError("status must be an HTTP error status (400-599)")
    for name in ("seconds", "after_steps", "after_chunks"):
        value = opts.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ValueError(f"{name} must be a number >= 0")
    return Fault(route=route, kind=kind, times=times, skip=skip, **opts)
