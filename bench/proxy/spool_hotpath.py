"""The write-ahead spool on the chat hot path, in isolation (bench-only; no server, no database).

Times what `BatchWriter.put` costs per row with the spool (app/gateway/spool.py: one orjson
dump + one write(2) on an O_APPEND fd) against the same put without it (a deque append), for a
request-log row and for a capture row of a realistic size (a 3-message prompt, a 64-token
answer with top-5 logprobs, ~23 KB of JSON). A captured completion spools two rows (its
capture and its request-log row); an uncaptured one spools one. Without a spool a capture
pays a deep copy of the answer instead (`orjson.loads(orjson.dumps(choice))` in proxy.py),
which the spooled line replaces: the "deep copy" column is what that costs, so the capture's
net added cost is spooled − (memory only + deep copy).

    .venv/bin/python bench/proxy/spool_hotpath.py [directory]   # default ./data/bench-spool
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import create_async_engine

from app.gateway.models import CapturedCompletion, GatewayRequest, new_request_log_id
from app.gateway.spool import Spool, decode, encode
from app.gateway.writer import BatchWriter, WriterMetrics

N = 50_000
ROUNDS = 3


def _log_row() -> dict[str, Any]:
    return {
        "id": new_request_log_id(),
        "created_at": dt.datetime.now(dt.UTC),
        "request_id": "req-0123456789abcdef",
        "key_id": "key-0123456789abcdef01234567",
        "route": "chat.completions",
        "model_requested": "bench-agent:production",
        "model_served": "wandb-artifact:///bench/babylon-rl/bench-agent:step1",
        "stream": False,
        "status_code": 200,
        "error_code": None,
        "latency_ms": 12.345,
        "overhead_ms": 0.321,
        "prompt_tokens": 120,
        "completion_tokens": 64,
        "trajectory_id": "traj-0123456789",
    }


def _capture_row(n: int) -> dict[str, Any]:
    token = {
        "token": "token_id:12345",
        "logprob": -0.12345,
        "bytes": [32, 116],
        "top_logprobs": [{"token": f"token_id:{i}", "logprob": -1.5 - i, "bytes": [116]} for i in range(5)],
    }
    return {
        "id": f"cap-{n:024x}",
        "created_at": dt.datetime.now(dt.UTC),
        "trajectory_id": "traj-0123456789",
        "agent_id": "agent-7",
        "step": 3,
        "model": "bench-agent:production",
        "upstream_model": "wandb-artifact:///bench/babylon-rl/bench-agent:step1",
        "messages": [
            {"role": "system", "content": "You trade on Babylon's prediction markets. " * 8},
            {"role": "user", "content": "Market 42 moved from 0.41 to 0.57 in an hour. What now? " * 4},
            {"role": "assistant", "content": "I hold. " * 10},
        ],
        "tools": None,
        "choice": {
            "index": 0,
            "message": {"role": "assistant", "content": "I buy YES at 0.57 because " * 8},
            "logprobs": {"content": [token] * 64, "refusal": None},
            "finish_reason": "stop",
        },
        "usage": {"prompt_tokens": 120, "completion_tokens": 64, "total_tokens": 184},
        "latency_ms": 812.5,
    }


def _writer(model: type[Any], spool: Spool | None) -> BatchWriter:
    table = model.__table__
    assert isinstance(table, sa.Table)
    engine = create_async_engine("sqlite+aiosqlite://")  # never connected: put() does no I/O
    return BatchWriter(
        table,
        engine,
        WriterMetrics(CollectorRegistry()),
        capacity=N + 1,
        batch_size=N + 1,
        interval_s=60,
        spool=spool,
    )


def _time_puts(writer: BatchWriter, rows: list[dict[str, Any]]) -> tuple[float, float]:
    """µs per put: wall, CPU."""
    writer._rows.clear()
    w0, c0 = time.perf_counter(), time.process_time()
    for row in rows:
        writer.put(row)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return wall / len(rows) * 1e6, cpu / len(rows) * 1e6


def main() -> None:
    base = Path(sys.argv[1] if len(sys.argv) > 1 else "./data/bench-spool")
    base.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(dir=base))
    try:
        for label, model, make in (
            ("request-log row", GatewayRequest, lambda n: _log_row()),
            ("capture row", CapturedCompletion, _capture_row),
        ):
            rows = [make(n) for n in range(N)]
            t0 = time.perf_counter()
            for row in rows[:10_000]:
                orjson.loads(orjson.dumps(row["choice"])) if "choice" in row else None
            copy_us = (time.perf_counter() - t0) / 10_000 * 1e6 if "choice" in rows[0] else 0.0
            lines = [encode(row) for row in rows[:10_000]]
            t0 = time.perf_counter()
            for line in lines:
                decode(line, ("created_at",))
            decode_us = (time.perf_counter() - t0) / len(lines) * 1e6
            spool = Spool(directory, model.__tablename__, rotate_rows=10_000, rotate_s=3600)
            spool.open()
            plain, spooled = _writer(model, None), _writer(model, spool)
            size = len(encode(rows[0]))
            best: dict[str, tuple[float, float]] = {}
            for _ in range(ROUNDS):
                for name, writer in (("memory only", plain), ("spooled", spooled)):
                    result = _time_puts(writer, rows)
                    if name not in best or result[0] < best[name][0]:
                        best[name] = result
                for segment in spool.rotated:  # as if committed: files deleted as they go
                    segment.settled = segment.rows
                spool.tick()
            added = best["spooled"][0] - best["memory only"][0] - copy_us
            print(
                f"{label:16s} {size:>6d} B/line  memory-only put {best['memory only'][0]:6.2f} µs"
                f" + deep copy {copy_us:6.2f} µs  spooled put {best['spooled'][0]:6.2f} µs"
                f" (CPU {best['spooled'][1]:6.2f})  net added on the response path {added:6.2f} µs;"
                f" the writer decodes it later: {decode_us:6.2f} µs, so net added CPU"
                f" {added + decode_us:6.2f} µs per row  (best of {ROUNDS} × {N:,} rows)"
            )
            spool.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
