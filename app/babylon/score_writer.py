"""Optional write-back of scores to the game's `trajectories."aiJudgeReward"` (babylon-data.md
§7.1 step 2), the column the game's own heuristic judge fills. This changes the game's
readiness counts (scored rows no longer count as unscored), hence off by default
(`BABYLON__WRITE_SCORES`, or `write_scores` per dataset)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from app.babylon.connection import connect

_UPDATE = """
UPDATE trajectories AS t
SET "aiJudgeReward" = v.reward,
    "aiJudgeReasoning" = v.reasoning,
    "judgedAt" = (now() AT TIME ZONE 'UTC'),
    "updatedAt" = (now() AT TIME ZONE 'UTC')
FROM unnest($1::text[], $2::float8[], $3::text[]) AS v(tid, reward, reasoning)
WHERE t."trajectoryId" = v.tid
"""


class BabylonScoreWriter:
    """`async with BabylonScoreWriter(url) as w: await w.write([(tid, score, reasoning), …])`."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> BabylonScoreWriter:
        self._conn = await connect(self._url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def write(self, scores: Sequence[tuple[str, float, str | None]]) -> int:
        """Update the rows' judge columns; returns how many game rows changed."""
        if not scores or self._conn is None:
            return 0
        status = await self._conn.execute(
            _UPDATE, [s[0] for s in scores], [s[1] for s in scores], [s[2] for s in scores]
        )
        return int(status.split()[-1])
