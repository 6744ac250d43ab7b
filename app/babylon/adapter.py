"""The Babylon game as an adapter of the core: its trajectory source (the game's Postgres),
its scorers, the hand-off of finished jobs to `training_batches`/`trained_models`, and
`POST /train`. Installed by the composition root (app/main.py, app/cli.py)."""

from __future__ import annotations

from app.adapters import GameAdapter
from app.babylon.delivery import BabylonHandoff
from app.babylon.router import router
from app.babylon.scorers import SCORERS
from app.babylon.source import SOURCE

ADAPTER = GameAdapter(
    name="babylon",
    source=SOURCE,
    default_source=True,
    scorers=SCORERS,
    handoff=BabylonHandoff(),
    routers=(router,),
)
