"""The operator dashboard in a real headless browser (Debian's chromium driven by Playwright)
against the service (uvicorn, in-process worker) training on the W&B emulator.

One flow, as an operator would: log in with an API key; a job trained through the official
SDK shows exactly one chart point per finished step with the values `checkpoints.list`
reports; an alias moved from the model page (confirmed) is what the gateway serves next; a
running job cancelled from its page (confirmed) ends cancelled. Every request to a host other
than 127.0.0.1/localhost is blocked and recorded (none may be attempted), and the console
must stay free of errors and warnings.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from app.main import create_app
from tests.conftest import TEST_API_KEY
from tests.fixtures.browser import browser_or_skip, offline_context
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.factories import make_dataset
from tests.fixtures.gateway import live_server
from tests.fixtures.service import service_settings, wait_for_job, wait_until

pytestmark = pytest.mark.e2e

BASE = "OpenPipe/Qwen3-14B-Instruct"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
CHART_METRICS = {
    "chart-reward": ("reward_mean", "reward_std"),
    "chart-loss": ("train_loss",),
    "chart-grad_norm": ("grad_norm",),
    "chart-tokens": ("num_trainable_tokens",),
}


def _metric(ckpt: Any, key: str) -> float:
    metrics = ckpt.metrics
    value = getattr(metrics, key, None)
    if value is None:
        value = (metrics.model_extra or {})[key]
    return float(value)


async def test_an_operator_logs_in_reads_a_jobs_curves_moves_an_alias_and_cancels_a_job(
    backend: str, settings: Any, emulator: EmulatorHandle
) -> None:
    if backend != "postgres":
        # one backend is enough for the browser (~12 s); tests/dashboard renders every page on both
        pytest.skip("the browser flow runs on Postgres")
    browser_or_skip()
    from playwright.async_api import ConsoleMessage, Dialog, Route, async_playwright

    app = create_app(service_settings(settings.database_url, emulator))
    async with live_server(app) as url:
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=TEST_API_KEY, max_retries=0)
        from app.state import app_state

        sessionmaker = app_state(app).sessionmaker
        # a job trained to the end: 3 groups, 1 per step → 3 steps, 3 checkpoints
        ds = await make_dataset(sessionmaker, groups=3, per_group=3)
        trained = await sdk.fine_tuning.jobs.create(
            model=BASE,
            training_file=ds.id,
            suffix="dash-agent",
            hyperparameters={"batch_size": 1},  # type: ignore[typeddict-unknown-key]
        )
        done = await wait_for_job(sdk, trained.id)
        assert done.status == "succeeded", done.error
        checkpoints = (await sdk.fine_tuning.jobs.checkpoints.list(trained.id, limit=100)).data
        by_step = {(c.model_extra or {})["job_step"]: c for c in checkpoints}
        assert sorted(by_step) == [1, 2, 3]

        blocked: list[str] = []
        console: list[str] = []

        async def only_this_machine(route: Route) -> None:
            host = urlsplit(route.request.url).hostname
            if host in LOCAL_HOSTS:
                await route.continue_()
            else:
                blocked.append(route.request.url)
                await route.abort("internetdisconnected")

        def on_console(message: ConsoleMessage) -> None:
            if message.type in ("error", "warning"):
                console.append(f"{message.type}: {message.text}")

        async with async_playwright() as pw:
            async with offline_context(pw, only_this_machine) as context:
                page = await context.new_page()
                page.on("console", on_console)
                page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
                dialogs: list[str] = []

                async def accept(dialog: Dialog) -> None:
                    dialogs.append(dialog.message)
                    await dialog.accept()

                page.on("dialog", accept)

                # log in: an unauthenticated page leads to the login form and back
                await page.goto(f"{url}/dashboard/jobs/{trained.id}")
                assert "/dashboard/login" in page.url
                await page.fill("#api_key", TEST_API_KEY)
                await page.click("button[type=submit]")
                await page.wait_for_url(f"{url}/dashboard/jobs/{trained.id}")
                cookies = await context.cookies()
                assert all(TEST_API_KEY not in c["value"] for c in cookies)
                assert {c["name"]: (c["httpOnly"], c["sameSite"]) for c in cookies} == {
                    "tc_dashboard": (True, "Strict")
                }

                # one chart point per finished step, with the API's values
                await page.wait_for_function("() => window.tcCharts && window.tcCharts['chart-reward']")
                for chart_id, keys in CHART_METRICS.items():
                    data = await page.evaluate(f"() => window.tcCharts[{chart_id!r}].data")
                    assert data[0] == [1, 2, 3], chart_id
                    for i, key in enumerate(keys, start=1):
                        assert data[i] == pytest.approx(
                            [_metric(by_step[s], key) for s in (1, 2, 3)], rel=1e-12
                        ), key

                # move `production` to step 1 from the model page; the gateway serves it next
                await page.click("text=dash-agent")
                await page.wait_for_selector("#alias-form")
                await page.fill("#alias-form input[name=alias]", "production")
                step1 = by_step[1]
                await page.select_option("#alias-form select[name=checkpoint]", value=step1.id)
                await page.click("#alias-form button[type=submit]")
                await page.wait_for_selector("tr[data-alias=production][data-step]")
                assert any("Move this alias?" in d for d in dialogs)
                served = await sdk.chat.completions.with_raw_response.create(
                    model="dash-agent:production", messages=[{"role": "user", "content": "hello"}]
                )
                assert served.headers["x-gateway-served-model"] == step1.fine_tuned_model_checkpoint
                assert await page.locator("#alias-history tr[data-alias=production]").count() == 1

                # a job still training on W&B, cancelled from its page
                emulator.set_pace(60)
                ds2 = await make_dataset(sessionmaker, groups=2)
                running = await sdk.fine_tuning.jobs.create(
                    model=BASE,
                    training_file=ds2.id,
                    suffix="dash-cancel",
                    hyperparameters={"batch_size": 1},  # type: ignore[typeddict-unknown-key]
                )

                async def started() -> bool:
                    return (await sdk.fine_tuning.jobs.retrieve(running.id)).status == "running"

                await wait_until(started, what="the second job running")
                await page.goto(f"{url}/dashboard/jobs/{running.id}")
                await page.click("#cancel-form button[type=submit]")
                cancelled = await wait_for_job(sdk, running.id, timeout_s=15)
                assert cancelled.status == "cancelled"
                assert any(d.startswith(f"Cancel job {running.id}?") for d in dialogs)
                # the page's live part follows the job to its end
                await page.wait_for_selector("#job-live[data-status=cancelled]", timeout=15_000)

                # the jobs list filtered in place (htmx swaps the table, the URL follows)
                await page.goto(f"{url}/dashboard/jobs")
                await page.select_option("select[name=status]", value="cancelled")
                await page.click(".filters button[type=submit]")
                await page.wait_for_url("**/dashboard/jobs?status=cancelled*")
                await page.wait_for_selector(f"#jobs-table tr[data-job-id='{running.id}']")
                assert await page.locator(f"#jobs-table tr[data-job-id='{trained.id}']").count() == 0

                # the other pages load as cleanly (console and network checked below)
                await page.goto(f"{url}/dashboard")
                await page.wait_for_selector("#gateway-models tr[data-model]")  # the htmx fragment
                for path in (
                    "/dashboard/jobs",
                    "/dashboard/models",
                    "/dashboard/datasets",
                    f"/dashboard/datasets/{ds.id}",
                    "/dashboard/captures?trajectory_id=none",
                ):
                    response = await page.goto(url + path, wait_until="networkidle")
                    assert response is not None
                    assert response.status == 200, path
        await sdk.close()

    assert blocked == [], f"the dashboard tried to reach beyond this machine: {blocked}"
    assert console == [], console
