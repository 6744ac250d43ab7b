"""`/v1/scores` (persisted per-trajectory scores) and `/v1/scorers` (what can be selected)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.auth import require_scope
from app.deps import SessionDep
from app.errors import error_responses
from app.keys.scopes import Scope
from app.pagination import ListPage, numbered_cursor
from app.scoring.registry import list_scorers
from app.scoring.schemas import SCORE_PREFIX, ScoreObject, ScorerObject
from app.scoring.service import list_scores

router = APIRouter(tags=["scores"], dependencies=[require_scope(Scope.training)])


@router.get("/v1/scores", response_model=ListPage[ScoreObject], responses=error_responses(400))
async def get_scores(
    session: SessionDep,
    window_id: Annotated[str | None, Query(max_length=200)] = None,
    agent_id: Annotated[str | None, Query(max_length=200)] = None,
    trajectory_id: Annotated[str | None, Query(max_length=200)] = None,
    scorer: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[str | None, Query(description="id of the last score seen (score-N)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ListPage[ScoreObject]:
    """Per-trajectory scores with their components, filtered by window, agent, trajectory, scorer."""
    after_id = numbered_cursor(after, SCORE_PREFIX)
    rows, has_more = await list_scores(
        session,
        window_id=window_id,
        agent_id=agent_id,
        trajectory_id=trajectory_id,
        scorer=scorer,
        after=after_id,
        limit=limit,
    )
    data = [ScoreObject.from_row(r) for r in rows]
    return ListPage.of(data, has_more)


@router.get("/v1/scorers", response_model=ListPage[ScorerObject])
async def get_scorers() -> ListPage[ScorerObject]:
    """The registered heuristic scorers (`scorer` / `scorer_version` of POST /v1/datasets)."""
    data = [ScorerObject.from_scorer(s) for s in list_scorers()]
    return ListPage.of(data, False)
