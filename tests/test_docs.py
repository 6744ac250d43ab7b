"""The OpenAPI document explains itself and `/docs` needs no internet (app/docs.py).

The page itself is rendered in a real browser in tests/e2e/test_docs_browser.py.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from fastapi import FastAPI

from app.docs import ASSET_FILES, OPENAPI_TAGS
from app.jobs.hyperparameters import Hyperparameters


async def test_docs_page_loads_its_scripts_from_the_service_not_a_cdn(anon_client: httpx.AsyncClient) -> None:
    html = (await anon_client.get("/docs")).text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", html) + re.findall(r"url: *['\"]([^'\"]+)", html)
    assert urls, html
    external = [u for u in urls if re.match(r"^(https?:)?//", u)]
    assert external == [], external
    assert "/docs/assets/swagger-ui-bundle.js" in urls
    assert "/docs/assets/swagger-ui.css" in urls


async def test_the_docs_assets_are_served_without_a_key(anon_client: httpx.AsyncClient) -> None:
    for name in ASSET_FILES:
        response = await anon_client.get(f"/docs/assets/{name}")
        assert response.status_code == 200, name
        assert len(response.content) > 1000, name
    script = await anon_client.get("/docs/assets/swagger-ui-bundle.js")
    assert "javascript" in script.headers["content-type"]


async def test_only_the_pages_own_assets_are_served(anon_client: httpx.AsyncClient) -> None:
    # The package ships ReDoc too; it is not a public route of this service (contract.md).
    assert (await anon_client.get("/docs/assets/redoc.standalone.js")).status_code == 404
    assert (await anon_client.get("/redoc")).status_code == 404


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


def test_every_tag_in_use_has_a_description(app: FastAPI) -> None:
    spec = app.openapi()
    described = {t["name"]: t.get("description", "") for t in spec["tags"]}
    used = {tag for _m, _p, op in _operations(spec) for tag in op.get("tags", [])}
    assert used, "no operation has a tag"
    assert used <= set(described), f"tags without a description: {used - set(described)}"
    assert all(len(d) > 40 for d in described.values()), described
    assert set(described) == {t["name"] for t in OPENAPI_TAGS}


def _untyped(schema: dict[str, Any]) -> bool:
    """A property that says nothing about its shape (what `Any` renders as)."""
    return not ({"type", "$ref", "anyOf", "oneOf", "allOf", "const", "enum"} & set(schema))


def test_every_request_body_field_has_a_type(app: FastAPI) -> None:
    spec = app.openapi()
    components = spec["components"]["schemas"]
    problems = []
    for method, path, op in _operations(spec):
        for media, body in op.get("requestBody", {}).get("content", {}).items():
            schema = body["schema"]
            if "$ref" in schema:
                name = schema["$ref"].rsplit("/", 1)[-1]
                schema = components[name]
            problems += [
                f"{method.upper()} {path} ({media}): {field}"
                for field, prop in schema.get("properties", {}).items()
                if _untyped(prop)
            ]
    assert problems == []


def test_fine_tuning_hyperparameters_and_method_are_documented_from_the_validator(app: FastAPI) -> None:
    job = app.openapi()["components"]["schemas"]["CreateJobRequest"]["properties"]
    hyperparameters = job["hyperparameters"]["properties"]
    assert set(Hyperparameters.model_fields) | {"batch_size", "epochs"} == set(hyperparameters)
    learning_rate = hyperparameters["learning_rate"]
    assert {"type": "number", "exclusiveMinimum": 0, "maximum": 0.001} in learning_rate["anyOf"]
    assert {"const": "auto"} in learning_rate["anyOf"]
    method = job["method"]
    assert method["properties"]["type"] == {"const": "reinforcement"}
    nested = method["properties"]["reinforcement"]["properties"]["hyperparameters"]
    assert nested["properties"] == hyperparameters
    level = hyperparameters["importance_sampling_level"]["anyOf"][0]
    assert set(level["enum"]) == {"token", "sequence", "average", "geometric_average"}


async def test_a_documented_method_example_is_accepted_by_the_api(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    # The example in the schema must pass the real validator: the job fails only on the
    # unknown training file (404), never on `method` (400 invalid_hyperparameters).
    example = app.openapi()["components"]["schemas"]["CreateJobRequest"]["properties"]["method"]["example"]
    response = await client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "OpenPipe/Qwen3-14B-Instruct", "training_file": "ds-missing", "method": example},
    )
    assert response.status_code == 404, response.text
    assert response.json()["error"]["param"] == "training_file"
