"""The scoped-key work on the chat hot path, in isolation (bench-only; no I/O, no server).

Times, per request, what a scoped key adds over a full-access one inside the gateway process:
the scope check, the local rate-limit budget with its x-ratelimit-* headers and the token charge
(`RateLimiter.admit` + `charge`, the budget pre-filled so no lease is taken), and the model
pattern match on the resolved model (`check_access`). The end-to-end figure is bench_keys.py;
this one is free of the shared machine's noise.

    .venv/bin/python bench/proxy/keys_hotpath.py
"""

from __future__ import annotations

import asyncio
import time

from app.auth import check_scope
from app.keys.ratelimit import RateLimiter
from app.keys.scopes import ModelAccess, Scope
from app.keys.service import Principal
from app.registry.resolution import Resolution, check_access

N = 200_000


async def main() -> None:
    limiter = RateLimiter(None, lease_fraction=0.1)  # type: ignore[arg-type]  # never leases here
    scoped = Principal(
        "key-bench",
        "bench-scoped",
        frozenset({Scope.inference}),
        ModelAccess.of(["bench-agent:*"]),
        10**9,
        10**9,
    )
    full = Principal("bootstrap-0", "bootstrap-0")
    budget = limiter._budget(scoped, time.time())
    assert budget.requests is not None
    assert budget.tokens is not None
    budget.requests.local = budget.tokens.local = 10**8
    resolution = Resolution(
        requested="bench-agent:production",
        upstream_model="wandb-artifact:///bench/babylon-rl/bench-agent:step1",
        base_model="OpenPipe/Qwen3-14B-Instruct",
        model_id="model-1",
        step=1,
        model_name="bench-agent",
    )
    results = {}
    for label, principal in (("full-access", full), ("scoped", scoped)):
        t0 = time.perf_counter()
        for _ in range(N):
            check_scope(principal, Scope.inference)
            if principal.limited:
                await limiter.admit(principal)
            check_access(principal.models, resolution)
            if principal.tpm is not None:
                limiter.charge(principal, 30)
        results[label] = (time.perf_counter() - t0) / N * 1e6
    for label, micros in results.items():
        print(f"{label:12s} {micros:6.2f} µs/request")
    print(f"{'delta':12s} {results['scoped'] - results['full-access']:6.2f} µs/request")


if __name__ == "__main__":
    asyncio.run(main())
