"""Cursor pages share one implementation (app/pagination.py): an unknown `after` is a clear 400."""

from __future__ import annotations

import httpx
import pytest

from app.pagination import numbered_cursor, numbered_id


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


@pytest.mark.parametrize(
    ("path", "cursor"),
    [
        ("/v1/scores", "grp-1"),
        ("/v1/scores", "score-x"),
        ("/v1/scores", "7"),
    ],
)
async def test_a_numbered_cursor_of_the_wrong_form_is_400_invalid_cursor(
    client: httpx.AsyncClient, path: str, cursor: str
) -> None:
    response = await client.get(path, params={"after": cursor})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_cursor", "after")
    assert "score-N" in error["message"]


def test_numbered_ids_read_back_as_their_number() -> None:
    assert numbered_cursor(numbered_id("grp", 12), "grp") == 12
    assert numbered_cursor(None, "grp") is None
