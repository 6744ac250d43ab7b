"""Every dashboard page rendered through the app with httpx, on rows seeded straight into the
database (app_dev/dashboard_seed.py): what each page shows agrees with the API's answers."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from app.gateway.models import CapturedCompletion, GatewayRequest
from app.jobs.models import JobStatus
from app.queue.models import WandbKeyStatus
from app.queue.workers import WorkerInfo, beat
from app.registry.models import AliasEvent
from app.state import app_state
from app_dev import dashboard_seed as seed
from tests.dashboard.test_sessions import browser, csrf_of, log_in


@pytest.fixture
async def operator(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with browser(app) as client:
        assert (await log_in(client)).status_code == 303
        yield client


def attrs(html: str, table_id: str, attr: str) -> list[str]:
    """The values of `data-<attr>` on the rows of table `table_id`."""
    start = html.index(f'id="{table_id}"')
    end = html.index("</table>", start)
    return re.findall(rf'data-{attr}="([^"]*)"', html[start:end])


async def test_the_job_page_shows_one_point_per_finished_step_with_the_apis_values(
    app: FastAPI, operator: httpx.AsyncClient, openai_client: openai.AsyncOpenAI
) -> None:
    async with app_state(app).sessionmaker() as session:
        job = await seed.seed_job(
            session, steps=4, total=6, status=JobStatus.RUNNING, metadata={"team": "red"}
        )
        await session.commit()
    page = await operator.get(f"/dashboard/jobs/{job.job_id}")
    assert page.status_code == 200
    html = page.text
    api = (await openai_client.fine_tuning.jobs.checkpoints.list(job.job_id, limit=100)).data
    by_step = {(c.model_extra or {})["job_step"]: c for c in api}
    assert attrs(html, "step-metrics", "step") == ["1", "2", "3", "4"]
    for key in ("reward_mean", "reward_std", "train_loss", "grad_norm", "num_trainable_tokens"):
        shown = [float(v) for v in attrs(html, "step-metrics", key)]
        reported = [
            float(getattr(by_step[s].metrics, key, None) or (by_step[s].metrics.model_extra or {})[key])
            for s in (1, 2, 3, 4)
        ]
        assert shown == reported, key
    # the checkpoints with the aliases pointing at them; the events; polling while it runs
    assert 'hx-trigger="every 2s"' in html
    assert "latest" in html
    assert "best" in html
    assert "Step 4/6 done" in html
    assert 'name="csrf_token"' in html


async def test_the_live_fragment_stops_polling_once_the_job_is_terminal(
    app: FastAPI, operator: httpx.AsyncClient
) -> None:
    async with app_state(app).sessionmaker() as session:
        job = await seed.seed_job(session, steps=2, status=JobStatus.SUCCEEDED)
        await session.commit()
    live = await operator.get(f"/dashboard/jobs/{job.job_id}/live", headers={"HX-Request": "true"})
    assert live.status_code == 200
    assert live.text.lstrip().startswith('<div id="job-live"')
    assert "hx-trigger" not in live.text
    assert "<html" not in live.text


async def test_the_jobs_list_filters_by_status_model_and_metadata_and_pages_by_cursor(
    app: FastAPI, operator: httpx.AsyncClient
) -> None:
    async with app_state(app).sessionmaker() as session:
        await seed.seed_many_jobs(session, 60)
        marked = await seed.seed_job(session, steps=1, model_name="special", metadata={"team": "blue"})
        await session.commit()
    first = await operator.get("/dashboard/jobs")
    rows = attrs(first.text, "jobs-table", "job-id")
    assert len(rows) == 25
    next_url = re.search(r'rel="next" href="([^"]+)"', first.text)
    assert next_url is not None
    second = await operator.get(next_url.group(1).replace("&amp;", "&"))
    assert not set(attrs(second.text, "jobs-table", "job-id")) & set(rows)

    special = await operator.get("/dashboard/jobs", params={"model": "special"})
    assert attrs(special.text, "jobs-table", "job-id") == [marked.job_id]
    blue = await operator.get("/dashboard/jobs", params={"metadata": "team=blue"})
    assert attrs(blue.text, "jobs-table", "job-id") == [marked.job_id]
    failed = await operator.get(
        "/dashboard/jobs",
        params={"status": "failed"},
        headers={"HX-Request": "true", "HX-Target": "jobs-table"},
    )
    assert failed.text.lstrip().startswith('<div id="jobs-table"')
    restored = await operator.get(
        "/dashboard/jobs", params={"status": "failed"}, headers={"HX-Request": "true"}
    )
    assert "<html" in restored.text  # htmx restoring a pushed URL gets the whole page
    assert (
        failed.text.count('class="status status-failed"')
        == len(attrs(failed.text, "jobs-table", "job-id"))
        > 0
    )
    bad = await operator.get("/dashboard/jobs", params={"status": "nope"})
    assert bad.status_code == 400
    assert "is not one of" in bad.text


async def test_moving_an_alias_from_the_model_page_records_an_event_and_the_api_serves_it(
    app: FastAPI, operator: httpx.AsyncClient, openai_client: openai.AsyncOpenAI
) -> None:
    async with app_state(app).sessionmaker() as session:
        job = await seed.seed_job(session, steps=3)
        await session.commit()
    page = await operator.get(f"/dashboard/models/{job.model.id}")
    assert page.status_code == 200
    assert attrs(page.text, "line-timeline", "step") == ["1", "2", "3"]  # the chart's points
    assert attrs(page.text, "line-checkpoints", "step") == ["3", "2", "1"]  # the table, newest first
    moved = await operator.post(
        f"/dashboard/models/{job.model.id}/aliases",
        data={"alias": "production", "checkpoint": job.checkpoint_ids[0], "csrf_token": csrf_of(page.text)},
        headers={"HX-Request": "true"},
    )
    assert moved.status_code == 200
    assert moved.headers["HX-Redirect"].startswith(f"/dashboard/models/{job.model.id}?notice=production")
    served = await openai_client.models.retrieve("agent:production")
    assert (served.model_extra or {})["step"] == 1
    async with app_state(app).sessionmaker() as session:
        events = (await session.scalars(sa.select(AliasEvent).where(AliasEvent.alias == "production"))).all()
    assert [(e.checkpoint_id, e.previous_checkpoint_id, e.actor) for e in events] == [
        (job.checkpoint_ids[0], None, "bootstrap-0")
    ]
    after = await operator.get(f"/dashboard/models/{job.model.id}")
    assert attrs(after.text, "aliases", "alias") == ["best", "latest", "production"]
    assert "bootstrap-0" in after.text
    refused = await operator.post(
        f"/dashboard/models/{job.model.id}/aliases",
        data={"alias": "step3", "checkpoint": job.checkpoint_ids[0], "csrf_token": csrf_of(page.text)},
    )
    assert refused.status_code == 303
    assert "invalid+alias" in refused.headers["location"]


async def test_overview_datasets_and_captures_render_their_numbers(
    app: FastAPI, operator: httpx.AsyncClient
) -> None:
    async with app_state(app).sessionmaker() as session:
        await seed.seed_job(session, steps=1, status=JobStatus.RUNNING)
        await seed.seed_gateway_traffic(session, 200)
        dataset = await seed.seed_dataset(session, groups=8)
        captures = await seed.seed_captures(session, "traj-42", steps=3)
        await session.commit()
    overview = await operator.get("/dashboard")
    assert overview.status_code == 200
    counts = dict(
        zip(
            attrs(overview.text, "jobs-by-status", "status"),
            attrs(overview.text, "jobs-by-status", "count"),
            strict=True,
        )
    )
    assert counts["running"] == "1"
    assert counts["succeeded"] == "0"
    assert 'hx-get="/dashboard/overview/gateway"' in overview.text
    overview = await operator.get("/dashboard/overview/gateway", headers={"HX-Request": "true"})
    assert overview.status_code == 200
    # the seed alternates the two models; every 10th request (all on agent:best) failed
    rates = dict(
        zip(
            attrs(overview.text, "gateway-models", "model"),
            [float(r) for r in attrs(overview.text, "gateway-models", "error-rate")],
            strict=True,
        )
    )
    assert rates == {"agent:latest": 0.0, "agent:best": 0.2}
    # p50/p99 by the database's window functions = nearest rank (⌈q·n⌉) over the hour's requests
    async with app_state(app).sessionmaker() as session:
        rows = (
            await session.execute(sa.select(GatewayRequest.model_served, GatewayRequest.latency_ms))
        ).all()
    p50 = dict(
        zip(
            attrs(overview.text, "gateway-models", "model"),
            attrs(overview.text, "gateway-models", "p50"),
            strict=True,
        )
    )
    p99 = dict(
        zip(
            attrs(overview.text, "gateway-models", "model"),
            attrs(overview.text, "gateway-models", "p99"),
            strict=True,
        )
    )
    for model in ("agent:latest", "agent:best"):
        latencies = sorted(latency for served, latency in rows if served == model)
        assert float(p50[model]) == latencies[math.ceil(0.5 * len(latencies)) - 1]
        assert float(p99[model]) == latencies[math.ceil(0.99 * len(latencies)) - 1]
    per_minute = [int(v) for v in attrs(overview.text, "gateway-minutes", "requests")]
    assert sum(per_minute) == 200
    assert len(per_minute) == 60
    # captures: the successful requests that carried a trajectory id (the even ones)
    assert sum(int(v) for v in attrs(overview.text, "gateway-minutes", "captures")) == 100

    ds = await operator.get(f"/dashboard/datasets/{dataset.id}")
    assert ds.status_code == 200
    # (JSONB keeps an object's keys in its own order)
    assert sorted(attrs(ds.text, "dropped-by-reason", "reason")) == ["equal_rewards", "single_trajectory"]
    assert sorted(attrs(ds.text, "rejections", "reason")) == ["invalid_json", "no_reward"]
    assert "no_reward in row 1" in ds.text
    assert attrs(ds.text, "groups", "position") == [str(i) for i in range(8)]
    listing = await operator.get("/dashboard/datasets")
    assert dataset.id in listing.text

    found = await operator.get("/dashboard/captures", params={"trajectory_id": "traj-42"})
    assert found.status_code == 200
    assert re.findall(r'data-capture-id="([^"]+)"', found.text) == captures
    assert found.text.count('class="token"') == 3 * 7
    assert "rgba(220, 80, 30," in found.text
    none = await operator.get("/dashboard/captures", params={"trajectory_id": "nothing"})
    assert "No capture for" in none.text


async def test_every_page_sends_a_policy_allowing_only_this_services_scripts(
    app: FastAPI, operator: httpx.AsyncClient
) -> None:
    for path in (
        "/dashboard",
        "/dashboard/jobs",
        "/dashboard/models",
        "/dashboard/datasets",
        "/dashboard/captures",
    ):
        response = await operator.get(path)
        assert response.status_code == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert "<script>" not in response.text
    missing = await operator.get("/dashboard/jobs/ftjob-missing")
    assert missing.status_code == 404
    assert "does not exist" in missing.text
    for asset in (
        "vendor/htmx/htmx.min.js",
        "vendor/uplot/uPlot.iife.min.js",
        "vendor/uplot/LICENSE",
        "dashboard.js",
    ):
        assert (await operator.get(f"/dashboard/static/{asset}")).status_code == 200, asset


async def test_long_lists_are_paged_by_cursor_while_charts_keep_every_point(
    app: FastAPI, operator: httpx.AsyncClient
) -> None:
    async with app_state(app).sessionmaker() as session:
        job = await seed.seed_job(session, steps=30)
        captures = await seed.seed_captures(session, "traj-long", steps=25)
        await session.commit()
    page = await operator.get(f"/dashboard/jobs/{job.job_id}")
    assert len(attrs(page.text, "step-metrics", "step")) == 30
    first = attrs(page.text, "checkpoints", "checkpoint-id")
    older = re.search(r'href="([^"]+)">Older checkpoints', page.text)
    assert older is not None
    rest = attrs((await operator.get(older.group(1))).text, "checkpoints", "checkpoint-id")
    assert (len(first), len(rest)) == (25, 5)
    assert first + rest == job.checkpoint_ids[::-1]

    found = await operator.get("/dashboard/captures", params={"trajectory_id": "traj-long"})
    shown = re.findall(r'data-capture-id="([^"]+)"', found.text)
    more = re.search(r'rel="next" href="([^"]+)"', found.text)
    assert more is not None
    shown += re.findall(
        r'data-capture-id="([^"]+)"', (await operator.get(more.group(1).replace("&amp;", "&"))).text
    )
    assert shown == captures  # step order, each once
    bad = await operator.get(
        "/dashboard/captures", params={"trajectory_id": "traj-long", "after": "cap-nope"}
    )
    assert bad.status_code == 400


async def test_captured_text_is_escaped_not_executed(app: FastAPI, operator: httpx.AsyncClient) -> None:
    async with app_state(app).sessionmaker() as session:
        (cap_id,) = await seed.seed_captures(session, "traj-xss", steps=1)
        cap = await session.get(CapturedCompletion, cap_id)
        assert cap is not None
        cap.messages = [{"role": "user", "content": "<script>alert(1)</script>"}]
        await session.commit()
    page = await operator.get("/dashboard/captures", params={"trajectory_id": "traj-xss"})
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


async def test_the_overview_shows_live_workers_and_datasets_building(
    app: FastAPI, operator: httpx.AsyncClient
) -> None:
    async with app_state(app).sessionmaker() as session:
        await beat(
            session,
            WorkerInfo(
                id="host:1:abc",
                in_api=False,
                has_wandb_key=True,
                wandb_key_status=WandbKeyStatus.ACCEPTED,
                jobs_running=2,
                items_running=1,
                max_jobs=4,
                metrics_port=None,
            ),
        )
        building = await seed.seed_dataset(session)
        building.status = "building"
        await session.commit()
    overview = await operator.get("/dashboard")
    assert '<strong id="workers-live">1</strong>' in overview.text
    assert "host:1:abc" in overview.text
    assert f'href="/dashboard/datasets/{building.id}"' in overview.text


async def test_the_model_page_shows_each_rollout_with_its_state_and_arms(
    app: FastAPI, operator: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    async with app_state(app).sessionmaker() as session:
        job = await seed.seed_job(session, steps=3)
        await session.commit()
    moved = await client.post(
        "/v1/models/agent/aliases", json={"alias": "production", "checkpoint": job.checkpoint_ids[0]}
    )
    assert moved.status_code == 200, moved.text
    url = "/v1/models/agent/rollouts"
    first = await client.post(url, json={"alias": "production", "candidate": "step2"})
    assert first.status_code == 200, first.text
    assert (await client.post(f"{url}/{first.json()['id']}/cancel")).status_code == 200
    second = await client.post(url, json={"alias": "production", "candidate": "step3", "share": 0.25})
    assert second.status_code == 200, second.text
    page = await operator.get(f"/dashboard/models/{job.model.id}")
    assert page.status_code == 200
    assert attrs(page.text, "rollouts", "state") == ["running", "cancelled"]  # newest first
    assert attrs(page.text, "rollouts", "candidate-step") == ["3", "2"]
