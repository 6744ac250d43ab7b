"""`/docs` in a real headless browser with no network: Debian's chromium driven by Playwright.

Every request the page makes that is not to the service is blocked and recorded; the test
asserts none was attempted (Swagger UI's script and CSS come from the service's own assets,
not a CDN) and that the operations, their tags' descriptions and the typed request bodies are
rendered. In CI a missing browser fails the test (`.ci/run` installs it); elsewhere it skips.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from app.docs import OPENAPI_TAGS
from tests.fixtures.browser import browser_or_skip, offline_context
from tests.fixtures.gateway import live_server

pytestmark = pytest.mark.e2e


@pytest.fixture
async def docs_url(app: FastAPI) -> AsyncIterator[str]:
    async with live_server(app) as base_url:
        yield base_url


async def test_docs_render_every_operation_offline_from_the_services_own_assets(
    app: FastAPI, docs_url: str
) -> None:
    browser_or_skip()
    from playwright.async_api import Route, async_playwright

    spec = app.openapi()
    operations = sum(len(ops) for ops in spec["paths"].values())
    blocked: list[str] = []
    served: list[str] = []
    console_errors: list[str] = []

    async def only_the_service(route: Route) -> None:
        url = route.request.url
        if url.startswith(docs_url + "/") or url == docs_url:
            served.append(url)
            await route.continue_()
        else:
            blocked.append(url)
            await route.abort("internetdisconnected")

    async with async_playwright() as pw:
        async with offline_context(pw, only_the_service) as context:
            page = await context.new_page()
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            response = await page.goto(f"{docs_url}/docs", wait_until="networkidle")
            assert response is not None
            assert response.status == 200
            await page.wait_for_selector(".opblock", timeout=30_000)
            rendered = await page.locator(".opblock").count()
            titles = await page.locator(".opblock-tag").all_inner_texts()
            page_text = await page.locator("#swagger-ui").inner_text()
            # The typed body of a fine-tuning job: `method` and `hyperparameters` have schemas.
            job_model = page.locator("section.models article.json-schema-2020-12").filter(
                has=page.locator(".json-schema-2020-12__title", has_text="CreateJobRequest")
            )
            await job_model.locator(".json-schema-2020-12-expand-deep-button").first.click()
            model_text = await job_model.first.inner_text()

    assert blocked == [], f"the docs tried to reach beyond the service: {blocked}"
    assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in served), served
    assert any(url.endswith("/openapi.json") for url in served), served
    assert rendered == operations, f"{rendered} operations rendered, the schema has {operations}"
    for tag in OPENAPI_TAGS:
        assert any(t.startswith(tag["name"]) for t in titles), (tag["name"], titles)
        first_words = " ".join(tag["description"].replace("`", "").split()[:3])
        assert first_words in page_text, (tag["name"], first_words)
    # Expanded all the way down: the fields of `method.reinforcement.hyperparameters` show.
    for field in ("hyperparameters", "method", "reinforcement", "learning_rate", "groups_per_step"):
        assert field in model_text, (field, model_text)
    assert not console_errors, console_errors
