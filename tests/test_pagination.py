"""Cursor pages share one implementation (app/pagination.py): an unknown `after` is a clear 400."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize(
    ("path", "what"),
    [
        ("/v1/datasets", "dataset"),
        ("/v1/trajectories", "pushed trajectory"),
        ("/v1/files", "file"),
        ("/v1/fine_tuning/jobs", "job"),
    ],
)
async def test_an_unknown_after_cursor_is_400_invalid_cursor(
    client: httpx.AsyncClient, path: str, what: str
) -> None:
    response = await client.get(path, params={"after": "nope-123"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_cursor"
    assert error["param"] == "after"
    assert error["message"] == f"after: no {what} with id 'nope-123'"


async def test_pages_follow_after_without_gaps_or_repeats(client: httpx.AsyncClient) -> None:
    items = [
        {
            "messages_and_choices": [{"role": "user", "content": str(i)}],
            "reward": float(i),
            "metadata": {"scenario_id": "s"},
        }
        for i in range(7)
    ]
    assert (await client.post("/v1/trajectories", json={"trajectories": items})).status_code == 200
    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 3}
    while True:
        page = (await client.get("/v1/trajectories", params=params)).json()
        seen += [t["id"] for t in page["data"]]
        assert page["first_id"] == (page["data"][0]["id"] if page["data"] else None)
        if not page["has_more"]:
            break
        params["after"] = page["last_id"]
    assert len(seen) == len(set(seen)) == 7
