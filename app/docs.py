"""The API's own documentation: Swagger UI at `/docs`, served from this service's assets, never
a CDN, so it works on a machine with no internet.

The assets come from the `fastapi-offline` package (PyPI), which ships Swagger UI 5 builds
refreshed with upstream releases and needs nothing but FastAPI; we only use its files and mount
them ourselves, so the app stays a plain `FastAPI` built by `create_app`. No ReDoc: the public
routes are `/docs` and `/openapi.json` (contract.md), and one docs page is enough.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")

# Swagger UI: keep a pasted key across reloads, show how long each call took, filter by tag.
SWAGGER_UI_PARAMETERS: dict[str, Any] = {
    "persistAuthorization": True,
    "displayRequestDuration": True,
    "filter": True,
    "tryItOutEnabled": False,
}

OPENAPI_TAGS: list[dict[str, Any]] = [
    {
        "name": "health",
        "description": "Liveness (`/healthz`), readiness (`/readyz`: the database answers and its schema "
        "is at the newest migration), the game's `/health`, and Prometheus `/metrics`. Only `/metrics` "
        "needs a key.",
    },
    {
        "name": "files",
        "description": 'Upload training data as JSONL (`client.files.create(file=…, purpose="fine-tune")`). '
        "Each line is one GRPO group of trajectories; only assistant turns that are sampled Choices with "
        "logprobs are trained on. A file with no trainable turn is refused at upload, naming the fix. "
        "The upload builds a dataset (`dataset_id`) that a job can use as its `training_file`.",
    },
    {
        "name": "trajectories",
        "description": "Push trajectories as the agents play (`POST /v1/trajectories`); they are grouped "
        "into datasets later by scenario or window.",
    },
    {
        "name": "rollouts",
        "description": "Reward-gated rollouts: a candidate checkpoint serves a share of an alias's traffic "
        "(sticky by trajectory) until the rewards its trajectories earn decide, with an always-valid "
        "confidence sequence: promoted (the alias moves), rolled back, or expired. Each decision is an "
        "event and a webhook (`rollout.promoted`, `rollout.rolled_back`, `rollout.expired`, "
        "`rollout.cancelled`).",
    },
    {
        "name": "scores",
        "description": "Local scorers (the game's own formulas) and the scores they gave each trajectory.",
    },
    {
        "name": "datasets",
        "description": "GRPO datasets: frozen snapshots of grouped, scored trajectories built from pushed "
        "trajectories, an uploaded file or the game's database, with the groups kept, the rows rejected "
        "and why.",
    },
    {
        "name": "fine-tuning",
        "description": "OpenAI's fine-tuning API (`client.fine_tuning.jobs.*`) running reinforcement "
        "learning on W&B Serverless RL: create, list, retrieve, cancel, events (one per state change and "
        "per gradient step) and checkpoints (one per training step).",
    },
    {
        "name": "inference",
        "description": "The OpenAI-compatible gateway: `/v1/chat/completions` serves base models, "
        "checkpoints and aliases (`<name>:latest`, `:best`, your own) and captures sampled completions "
        "with logprobs for training; `/v1/models` lists what can be served and moves aliases.",
    },
    {
        "name": "keys",
        "description": "Stored API keys (admin scope): list, create (the value is shown once) and revoke. "
        "A key holds scopes (`inference`, `training`, `admin`), optional model patterns (`babylon-agent:*`), "
        "requests/tokens-per-minute limits and an expiry. `GET /v1/usage` (tagged inference) reports each "
        "key's requests, errors and tokens per model and day.",
    },
    {
        "name": "babylon",
        "description": "The game's trigger `POST /train` (the contract of its old Python worker): trains a "
        "`training_batches` row and hands the result back to the game's tables.",
    },
]


class _Assets(StaticFiles):
    def lookup_path(self, path: str) -> tuple[str, Any]:
        if path not in ASSET_FILES:
            return "", None
        return super().lookup_path(path)


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI from local assets. Create the app with `docs_url=None, redoc_url=None`
    (FastAPI's own pages load their scripts from a CDN)."""
    missing = [name for name in ASSET_FILES if not (ASSETS_DIR / name).is_file()]
    if missing:  # a broken install must fail at start, not show a blank page
        raise RuntimeError(f"the API docs' assets are missing from {ASSETS_DIR}: {', '.join(missing)}")
    # Only the three files the page loads (the package also ships ReDoc, which we do not serve).
    app.mount(ASSETS_URL, _Assets(directory=ASSETS_DIR), name="docs-assets")
    app.swagger_ui_parameters = {**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})}
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect_url}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
