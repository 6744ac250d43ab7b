"""The operator dashboard: server-rendered pages (Jinja2) with htmx partial updates and uPlot
charts, all served by this service from app/dashboard/static (no CDN, no build step).

Authorization lives in one place: `require_operator`, the dependency every page and action
takes, yields the `Principal` of the session's API key. A login stores only hashes
(app/dashboard/service.py); the browser holds a random token in an HttpOnly, SameSite=Strict
cookie, and POST actions carry a CSRF token derived from it. Pages read through the same
service functions as the API routes (app/jobs, app/registry, app/datasets, app/queue).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from starlette.responses import HTMLResponse, RedirectResponse

from app.auth import ScopeRequirement
from app.dashboard import service
from app.datasets import service as datasets
from app.datasets.models import DatasetStatus
from app.db import to_unix
from app.deps import SessionDep
from app.errors import AppError, BadRequest
from app.jobs import service as jobs
from app.jobs.models import TERMINAL_STATUSES, FineTuningJob, JobStatus
from app.jobs.schemas import checkpoint_object, event_object, job_object
from app.keys.scopes import Scope
from app.keys.service import Principal
from app.queue.workers import describe, live_workers
from app.registry import service as registry
from app.registry.models import CheckpointOrigin
from app.rollouts import service as rollouts
from app.state import app_state

PREFIX = "/dashboard"
STATIC_URL = f"{PREFIX}/static"
COOKIE = "tc_dashboard"
HERE = Path(__file__).parent
PAGE_SIZE = 25
EVENTS_PAGE = 20
MAX_CHART_POINTS = 5_000  # checkpoints drawn on a job's or a line's charts
CHECKPOINTS_PAGE = 25  # rows of a checkpoints table (the charts draw them all)
GROUPS_PAGE = 20
REJECTION_SAMPLES = 3

templates = Jinja2Templates(directory=HERE / "templates")


# Filters, not macros: a job page formats ~1,500 numbers, and a Jinja macro call costs ~20x a
# filter call (bench/dashboard/README.md).


def _iso(when: dt.datetime | int | float | None) -> str:
    if not when:
        return "—"
    if isinstance(when, dt.datetime):
        return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ts(when: dt.datetime | int | float | None) -> Markup:
    if not when:
        return Markup("—")
    unix = int(when.timestamp()) if isinstance(when, dt.datetime) else int(when)
    return Markup('<time data-unix="{}">{}</time>').format(unix, _iso(unix))


def _num(value: Any, digits: int = 4) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    return f"{value:.{digits}g}"


templates.env.filters.update(iso=_iso, ts=_ts, num=_num)

# Scripts only from this service (no inline script, no eval); uPlot and htmx set inline styles.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """No valid session: pages redirect to the login page."""


class CsrfRejected(Exception):
    """A POST without this session's CSRF token, or from another origin."""


class DashboardRoute(APIRoute):
    """Errors as pages: an `AppError` renders the error page with its status, a missing
    session redirects to the login (htmx requests get `HX-Redirect`, which htmx follows)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                target = f"{PREFIX}/login"
                if request.method == "GET" and not request.headers.get("hx-request"):
                    target += "?" + urlencode({"next": request.url.path})
                return _redirect(request, target)
            except CsrfRejected:
                return _render(
                    request,
                    "error.html",
                    {"status": 403, "message": "CSRF check failed: reload the page and retry."},
                    status=403,
                )
            except AppError as exc:
                return _render(
                    request,
                    "error.html",
                    {"status": exc.status_code, "message": exc.message, "code": exc.code},
                    status=exc.status_code,
                )

        return handle


router = APIRouter(prefix=PREFIX, route_class=DashboardRoute, include_in_schema=False)


def _render(request: Request, name: str, context: dict[str, Any], *, status: int = 200) -> HTMLResponse:
    context = {
        "request": request,
        "principal": getattr(request.state, "principal", None),
        "csrf": getattr(request.state, "csrf", ""),
        "static": STATIC_URL,
        "prefix": PREFIX,
        **context,
    }
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def _redirect(request: Request, url: str) -> Response:
    """After a POST or for a lost session: htmx follows `HX-Redirect` with a full page load;
    a plain browser request gets 303 See Other (RFC 9110 §15.4.4)."""
    if request.headers.get("hx-request"):
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def _safe_next(target: str | None) -> str:
    """Only a path of this dashboard: never an open redirect to another site."""
    inside = target == PREFIX or target.startswith((PREFIX + "/", PREFIX + "?")) if target else False
    if target and inside and "\\" not in target:
        return target
    return PREFIX


# -- the one authorization point -------------------------------------------------------------


async def require_operator(request: Request) -> Principal:
    """The Principal of this browser's session; every page and action depends on it, and its
    scope (`page_scope`) is checked against this Principal."""
    state = app_state(request.app)
    token = request.cookies.get(COOKIE)
    # a short session of its own, closed before the key is verified (see session_principal)
    async with state.sessionmaker() as session:
        found = await service.find_session(session, token)
    principal = await service.session_principal(state.authenticator, found)
    if principal is None or token is None:
        raise LoginRequired
    request.state.principal = principal
    request.state.csrf = service.csrf_token(token)
    return principal


OperatorDep = Annotated[Principal, Depends(require_operator)]


class SessionScopeRequirement(ScopeRequirement):
    """The API's scope declaration (app/auth.require_scope) for a page: the same scopes, checked
    against the session's key instead of a Bearer header, so the scope matrix
    (tests/test_scopes.py) reads the dashboard's decisions like any route's. The session is
    looked up once per request: FastAPI caches `require_operator` within a request."""

    async def __call__(self, principal: OperatorDep) -> Principal:
        return await super().__call__(principal)


def page_scope(scope: Scope) -> Any:
    """`dependencies=[page_scope(Scope.training)]` on every page and action: reading pages need
    `training` (what the API's job, dataset and model reads need), moving an alias `admin`."""
    return Depends(SessionScopeRequirement(scope))


READ = [page_scope(Scope.training)]


def _same_origin(request: Request) -> bool:
    """A browser POST names its origin (Fetch standard); one from another site is refused even
    before the CSRF token is checked (OWASP: verify origin with standard headers)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def check_csrf(request: Request, submitted: str | None) -> None:
    token = request.cookies.get(COOKIE)
    if not _same_origin(request) or token is None or not service.csrf_matches(token, submitted):
        raise CsrfRejected


CsrfField = Annotated[str | None, Form(alias="csrf_token")]


# -- login ------------------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return _render(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login")
async def login(
    request: Request,
    session: SessionDep,
    api_key: Annotated[str, Form(max_length=512)] = "",
    next: Annotated[str | None, Form()] = None,
) -> Response:
    if not _same_origin(request):
        raise CsrfRejected
    if not api_key.strip():
        return _render(
            request, "login.html", {"next": _safe_next(next), "error": "Paste an API key."}, status=400
        )
    state = app_state(request.app)
    ttl = state.settings.auth.dashboard_session_ttl_s
    login = await service.log_in(session, state.authenticator, api_key, ttl_s=ttl)
    if login is None:
        return _render(
            request,
            "login.html",
            {"next": _safe_next(next), "error": "That API key is not valid."},
            status=401,
        )
    await session.commit()
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        login.token,
        max_age=int(ttl),
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionDep, csrf_token: CsrfField = None) -> Response:
    token = request.cookies.get(COOKIE)
    if token is not None:
        check_csrf(request, csrf_token)
        await service.log_out(session, token)
        await session.commit()
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response


# -- overview ---------------------------------------------------------------------------------


@router.get("", dependencies=READ)
async def overview(request: Request, session: SessionDep, _principal: OperatorDep) -> HTMLResponse:
    state = app_state(request.app)
    workers = describe(await live_workers(session, state.settings))
    return _render(
        request,
        "overview.html",
        {
            "nav": "overview",
            "by_status": await service.jobs_by_status(session),
            "workers": workers,
            "building": await service.datasets_building(session),
        },
    )


@router.get("/overview/gateway", dependencies=READ)
async def overview_gateway(request: Request, session: SessionDep, _principal: OperatorDep) -> HTMLResponse:
    """The gateway's last hour: a fragment of its own (its queries read the whole hour of the
    request log), so the overview shows at once and this part follows and refreshes."""
    return _render(request, "overview_gateway.html", {"gateway": await service.gateway_last_hour(session)})


# -- jobs -------------------------------------------------------------------------------------


def _parse_metadata(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise BadRequest(
                f"metadata filter {part.strip()!r}: write key=value (comma-separated)", param="metadata"
            )
        pairs[key.strip()] = value.strip()
    return pairs


@router.get("/jobs", dependencies=READ)
async def jobs_page(
    request: Request,
    session: SessionDep,
    _principal: OperatorDep,
    status: str = "",
    model: str = "",
    metadata: str = "",
    after: str | None = None,
) -> HTMLResponse:
    rows, has_more = await jobs.list_jobs(
        session,
        after=after or None,
        limit=PAGE_SIZE,
        metadata=_parse_metadata(metadata),
        status=status or None,
        model=model.strip() or None,
    )
    filters = {"status": status, "model": model, "metadata": metadata}
    next_url = None
    if has_more and rows:
        next_url = f"{PREFIX}/jobs?" + urlencode(
            {**{k: v for k, v in filters.items() if v}, "after": rows[-1].id}
        )
    # the table alone for the filter form's htmx request (it targets #jobs-table); the whole
    # page otherwise, history restores (htmx re-requests a pushed URL) included
    template = "jobs_table.html" if request.headers.get("hx-target") == "jobs-table" else "jobs.html"
    return _render(
        request,
        template,
        {
            "nav": "jobs",
            "jobs": [_job_row(j) for j in rows],
            "filters": filters,
            "statuses": [s.value for s in JobStatus],
            "next_url": next_url,
            "first_page": after is None,
        },
    )


@dataclass(frozen=True)
class JobRow:
    id: str
    status: str
    model: str
    line: str
    steps: str
    created_at: int
    metadata: dict[str, str]


def _job_row(job: FineTuningJob) -> JobRow:
    return JobRow(
        id=job.id,
        status=job.status,
        model=job.base_model,
        line=job.model_name,
        steps=f"{job.completed_steps}/{job.total_steps}",
        created_at=to_unix(job.created_at) or 0,
        metadata=job.job_metadata or {},
    )


# per-step series drawn on a job's page, from each step's checkpoint metrics (the API's
# `checkpoints.list` objects): (chart title, [(metric key, label)])
JOB_CHARTS: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "reward",
        "Reward per step: mean and spread (std)",
        [("reward_mean", "mean"), ("reward_std", "std")],
    ),
    ("loss", "Loss", [("train_loss", "train loss")]),
    ("grad_norm", "Gradient norm", [("grad_norm", "grad norm")]),
    ("tokens", "Trainable tokens", [("num_trainable_tokens", "tokens")]),
]
STEP_METRICS = ["reward_mean", "reward_std", "train_loss", "grad_norm", "num_trainable_tokens"]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _page_by_step(
    items: list[Any], step_of: Callable[[Any], int], before: int | None
) -> tuple[list[Any], int | None]:
    """A newest-first page of checkpoints already read for the charts: those below step
    `before`, and the cursor of the next page (the last step shown) when more follow."""
    rows = [c for c in items if before is None or step_of(c) < before]
    page = rows[:CHECKPOINTS_PAGE]
    return page, (step_of(page[-1]) if len(rows) > CHECKPOINTS_PAGE else None)


async def _job_context(
    session: SessionDep, job_id: str, after: str | None = None, before: int | None = None
) -> dict[str, Any]:
    job = await jobs.get_job(session, job_id)
    ckpts, _ = await jobs.list_checkpoints(
        session, job_id, after=None, limit=MAX_CHART_POINTS, include_deleted=True
    )
    objects = [checkpoint_object(c, job_id) for c in ckpts]
    aliases = await registry.aliases_of_checkpoints(session, [c.id for c in ckpts])
    # one point per finished step: the checkpoints of steps the job completed (late ones are
    # listed, not charted), in step order
    steps = sorted(
        (o for o in objects if (o.model_extra or {}).get("origin") == CheckpointOrigin.STEP),
        key=lambda o: (o.model_extra or {}).get("job_step") or o.step_number,
    )
    points = [
        {
            "step": (o.model_extra or {}).get("job_step") or o.step_number,
            "checkpoint_step": o.step_number,
            "metrics": {k: _number(o.metrics.get(k)) for k in STEP_METRICS},
        }
        for o in steps
    ]
    table, table_next = _page_by_step(objects, lambda o: o.step_number, before)
    events, events_more = await jobs.list_events(session, job_id, after=after, limit=EVENTS_PAGE)
    return {
        "job": job_object(job),
        "terminal": job.status in TERMINAL_STATUSES,
        "cancel_requested": job.cancel_requested_at is not None,
        "checkpoints": table,
        "checkpoints_total": len(objects),
        "checkpoints_before": table_next,
        "aliases": aliases,
        "points": points,
        "charts": JOB_CHARTS,
        "events": [event_object(e) for e in events],
        "events_older": events[-1].id if events_more and events else None,
        "paged": after is not None or before is not None,
        "line": await registry.model_line_by_name(session, job.model_name),
    }


@router.get("/jobs/{job_id}", dependencies=READ)
async def job_page(
    request: Request,
    job_id: str,
    session: SessionDep,
    _principal: OperatorDep,
    after: str | None = None,
    before: Annotated[int | None, Query(ge=0)] = None,
) -> HTMLResponse:
    context = await _job_context(session, job_id, after, before)
    return _render(
        request, "job.html", {"nav": "jobs", "notice": request.query_params.get("notice"), **context}
    )


@router.get("/jobs/{job_id}/live", dependencies=READ)
async def job_live(
    request: Request, job_id: str, session: SessionDep, _principal: OperatorDep
) -> HTMLResponse:
    """The part of a job's page that changes: status, step charts and newest events. Polled by
    htmx while the job runs; a terminal job's fragment carries no trigger, so polling stops."""
    return _render(request, "job_live.html", await _job_context(session, job_id))


@router.post("/jobs/{job_id}/cancel", dependencies=READ)
async def job_cancel(
    request: Request, job_id: str, session: SessionDep, _principal: OperatorDep, csrf_token: CsrfField = None
) -> Response:
    check_csrf(request, csrf_token)
    state = app_state(request.app)
    try:
        await jobs.cancel_job(session, state.settings, job_id)
        await session.commit()
    except AppError as exc:
        await session.rollback()
        return _redirect(request, f"{PREFIX}/jobs/{job_id}?" + urlencode({"notice": exc.message}))
    state.wake_worker()
    return _redirect(request, f"{PREFIX}/jobs/{job_id}?" + urlencode({"notice": "Cancellation requested."}))


# -- models -----------------------------------------------------------------------------------


@router.get("/models", dependencies=READ)
async def models_page(
    request: Request, session: SessionDep, _principal: OperatorDep, after: str | None = None
) -> HTMLResponse:
    lines, has_more = await registry.list_model_lines(session, after=after or None, limit=PAGE_SIZE)
    aliases = await registry.line_aliases(session, [m.id for m in lines])
    by_line: dict[str, list[tuple[str, int]]] = {}
    for alias, ckpt in aliases:
        by_line.setdefault(alias.model_id, []).append((alias.alias, ckpt.step))
    return _render(
        request,
        "models.html",
        {
            "nav": "models",
            "lines": lines,
            "aliases": by_line,
            "next_url": f"{PREFIX}/models?after={lines[-1].id}" if has_more and lines else None,
        },
    )


@router.get("/models/{model_id}", dependencies=READ)
async def model_page(
    request: Request,
    model_id: str,
    session: SessionDep,
    _principal: OperatorDep,
    before: Annotated[int | None, Query(ge=0)] = None,
) -> HTMLResponse:
    line = await registry.get_model_line(session, model_id)
    ckpts = await registry.line_checkpoints(session, line, limit=MAX_CHART_POINTS)
    table, table_next = _page_by_step(ckpts[::-1], lambda c: c.step, before)
    aliases = await registry.line_aliases(session, [line.id])
    pointing: dict[str, list[str]] = {}
    for alias, ckpt in aliases:
        pointing.setdefault(ckpt.id, []).append(alias.alias)
    history = await registry.alias_history(session, line, limit=50)
    # the newest rollouts with their decisions (the API's own listing, GET …/rollouts)
    line_rollouts, _ = await rollouts.list_rollouts(session, line.name, after=None, limit=10, state=None)
    metric = app_state(request.app).settings.training.best_metric
    return _render(
        request,
        "model.html",
        {
            "nav": "models",
            "line": line,
            "checkpoints": ckpts,
            "table": table,
            "table_next": table_next,
            "pointing": pointing,
            "aliases": [(a.alias, c) for a, c in aliases],
            "history": history,
            "rollouts": line_rollouts,
            "steps_by_id": {c.id: c.step for c in ckpts},
            "metric": metric,
            "metric_of": {c.id: _number(c.metrics.get(metric)) for c in ckpts},
            "notice": request.query_params.get("notice"),
        },
    )


@router.post("/models/{model_id}/aliases", dependencies=[page_scope(Scope.admin)])
async def model_move_alias(
    request: Request,
    model_id: str,
    session: SessionDep,
    principal: OperatorDep,
    alias: Annotated[str, Form(max_length=64)] = "",
    checkpoint: Annotated[str, Form(max_length=500)] = "",
    csrf_token: CsrfField = None,
) -> Response:
    """The API's alias move (`registry.point_alias`, as POST /v1/models/{name}/aliases), recorded
    as an alias event by this operator's key."""
    check_csrf(request, csrf_token)
    page = f"{PREFIX}/models/{model_id}"
    try:
        line = await registry.get_model_line(session, model_id)
        name = registry.artifact_name(line.entity, line.project, line.name)
        _, _, ckpt = await registry.point_alias(
            session, name, alias.strip(), checkpoint, actor=principal.key_id
        )
        await session.commit()
    except AppError as exc:
        await session.rollback()
        return _redirect(request, page + "?" + urlencode({"notice": exc.message}))
    state = app_state(request.app)
    if state.gateway is not None:
        state.resolver.invalidate()
    return _redirect(
        request, page + "?" + urlencode({"notice": f"{alias.strip()} now serves step {ckpt.step}."})
    )


# -- datasets ---------------------------------------------------------------------------------


@router.get("/datasets", dependencies=READ)
async def datasets_page(
    request: Request, session: SessionDep, _principal: OperatorDep, after: str | None = None
) -> HTMLResponse:
    rows, has_more = await datasets.list_datasets(session, after=after or None, limit=PAGE_SIZE)
    return _render(
        request,
        "datasets.html",
        {
            "nav": "datasets",
            "datasets": rows,
            "next_url": f"{PREFIX}/datasets?after={rows[-1].id}" if has_more and rows else None,
        },
    )


@router.get("/datasets/{dataset_id}", dependencies=READ)
async def dataset_page(
    request: Request,
    dataset_id: str,
    session: SessionDep,
    _principal: OperatorDep,
    start: Annotated[int, Query(ge=0)] = 0,
) -> HTMLResponse:
    dataset = await datasets.get_dataset(session, dataset_id)
    stats = dataset.stats or {}
    samples: dict[str, list[Any]] = {}
    for reason in stats.get("rejected_by_reason") or {}:
        rows, _ = await datasets.list_rejections(
            session, dataset_id, reason=reason, after=None, limit=REJECTION_SAMPLES
        )
        samples[reason] = rows
    groups = []
    next_start = None
    if dataset.status == DatasetStatus.READY:
        rows_ = await datasets.list_group_rows(session, dataset_id, start=start, limit=GROUPS_PAGE + 1)
        if len(rows_) > GROUPS_PAGE:
            next_start = rows_[GROUPS_PAGE].position
        for g in rows_[:GROUPS_PAGE]:
            rewards = [float(r) for r in g.rewards]
            groups.append(
                {
                    "position": g.position,
                    "scenario_id": g.scenario_id,
                    "size": len(rewards),
                    "trainable_turns": g.trainable_turns,
                    "min": min(rewards) if rewards else None,
                    "max": max(rewards) if rewards else None,
                    "mean": sum(rewards) / len(rewards) if rewards else None,
                    "rewards": rewards,
                }
            )
    return _render(
        request,
        "dataset.html",
        {
            "nav": "datasets",
            "dataset": dataset,
            "stats": stats,
            "samples": samples,
            "groups": groups,
            "next_start": next_start,
        },
    )


# -- captures ---------------------------------------------------------------------------------


def _shade(logprob: Any) -> str:
    """A token's background: the less likely the sampled token was, the darker the shade."""
    value = _number(logprob)
    if value is None:
        return "transparent"
    alpha = max(0.0, min(1.0, 1.0 - math.exp(min(value, 0.0))))
    return f"rgba(220, 80, 30, {alpha:.3f})"


@router.get("/captures", dependencies=READ)
async def captures_page(
    request: Request,
    session: SessionDep,
    _principal: OperatorDep,
    trajectory_id: Annotated[str, Query(max_length=200)] = "",
    after: str | None = None,
) -> HTMLResponse:
    captures: list[dict[str, Any]] = []
    next_url = None
    tid = trajectory_id.strip()
    if tid:
        rows, has_more = await service.trajectory_captures(session, tid, after=after or None)
        for c in rows:
            choice = c.choice or {}
            tokens = [
                {"text": t.get("token", ""), "logprob": t.get("logprob"), "shade": _shade(t.get("logprob"))}
                for t in ((choice.get("logprobs") or {}).get("content") or [])
                if isinstance(t, dict)
            ]
            message = choice.get("message") or {}
            captures.append(
                {
                    "id": c.id,
                    "step": c.step,
                    "agent_id": c.agent_id,
                    "model": c.model,
                    "upstream_model": c.upstream_model,
                    "created_at": to_unix(c.created_at),
                    "messages": c.messages,
                    "answer": message.get("content") or "",
                    "tool_calls": message.get("tool_calls"),
                    "tokens": tokens,
                    "usage": c.usage,
                    "latency_ms": c.latency_ms,
                }
            )
        if has_more and rows:
            next_url = f"{PREFIX}/captures?" + urlencode({"trajectory_id": tid, "after": rows[-1].id})
    return _render(
        request,
        "captures.html",
        {"nav": "captures", "trajectory_id": tid, "captures": captures, "next_url": next_url},
    )


# -- wiring -----------------------------------------------------------------------------------


class _Static(StaticFiles):
    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install_dashboard(app: FastAPI) -> None:
    """Mount the dashboard's assets and pages; `GET /` leads to it."""
    app.mount(STATIC_URL, _Static(directory=HERE / "static"), name="dashboard-static")
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(PREFIX, status_code=307)
