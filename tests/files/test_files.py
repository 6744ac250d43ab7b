"""`/v1/files` through the official openai SDK: fine-tune JSONL of ART trajectory groups.

An upload answers at once (`uploaded`, its dataset queued); the worker validates the lines and
builds the dataset, after which the file is `processed` or `error` (naming the first bad line)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from app.datasets.models import Dataset, DatasetGroup
from app.datasets.service import list_group_rows
from app.errors import NotFound
from app.files.models import FileChunk
from app.files.service import resolve_training_file
from app.state import app_state
from app.worker.loop import Worker
from tests.fixtures.service import running_worker

CHOICE = {
    "index": 0,
    "finish_reason": "stop",
    "message": {"role": "assistant", "content": "BUY"},
    "logprobs": {"content": [{"token": "token_id:5", "bytes": [66], "logprob": -0.1, "top_logprobs": []}]},
}


def trajectory(reward: float, *, trainable: bool = True) -> dict[str, Any]:
    answer = CHOICE if trainable else {"role": "assistant", "content": "HOLD"}
    return {
        "messages_and_choices": [
            {"role": "system", "content": "Trade."},
            {"role": "user", "content": "Now?"},
            answer,
        ],
        "reward": reward,
        "metadata": {"scenario_id": "s1"},
    }


def jsonl(*lines: Any) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


@pytest.fixture
async def worker(app: FastAPI) -> AsyncIterator[Worker]:
    async with running_worker(app) as started:
        yield started


async def processed(client: openai.AsyncOpenAI, file_id: str) -> Any:
    """The file once its dataset's build (by the worker) has ended."""
    file = await client.files.retrieve(file_id)
    dataset_id = (file.model_extra or {})["dataset_id"]
    for _ in range(1500):
        dataset = await client.get(f"/datasets/{dataset_id}", cast_to=httpx.Response)
        if dataset.json()["status"] not in ("queued", "building"):
            return file
        await asyncio.sleep(0.02)
    raise AssertionError(f"the build of {dataset_id} did not end")


GOOD = jsonl(
    {"trajectories": [trajectory(1.0), trajectory(0.0, trainable=False)], "metadata": {"scenario_id": "s1"}},
    {"trajectories": [trajectory(0.5), trajectory(0.7)]},
)


async def test_an_upload_answers_at_once_with_its_dataset_queued_and_no_worker_needed_to_answer(
    openai_client: openai.AsyncOpenAI, app: FastAPI
) -> None:
    created = await openai_client.files.create(file=("groups.jsonl", GOOD), purpose="fine-tune")
    assert created.status == "processed"  # every line was validated as it arrived
    assert created.bytes == len(GOOD)
    dataset_id = (created.model_extra or {})["dataset_id"]
    async with app_state(app).sessionmaker() as session:
        dataset = await session.get(Dataset, dataset_id)
        assert dataset is not None
        assert (dataset.source, dataset.status) == ("file", "queued")
    async with running_worker(app):
        done = await processed(openai_client, created.id)
    assert done.status == "processed"


async def test_upload_list_retrieve_content_and_delete_with_the_openai_sdk(
    openai_client: openai.AsyncOpenAI, app: FastAPI, worker: Worker
) -> None:
    created = await openai_client.files.create(
        file=("groups.jsonl", GOOD, "application/jsonl"), purpose="fine-tune"
    )
    assert created.id.startswith("file-")
    assert (created.object, created.purpose) == ("file", "fine-tune")
    created = await processed(openai_client, created.id)
    assert created.status == "processed"
    assert created.bytes == len(GOOD)
    assert created.filename == "groups.jsonl"
    assert (await openai_client.files.retrieve(created.id)).id == created.id
    assert [f.id async for f in openai_client.files.list()] == [created.id]
    content = (await openai_client.files.content(created.id)).read()
    assert content == GOOD  # the bytes as they were uploaded
    lines = [json.loads(x) for x in content.splitlines()]
    assert [[t["reward"] for t in g["trajectories"]] for g in lines] == [[1.0, 0.0], [0.5, 0.7]]

    async with app_state(app).sessionmaker() as session:
        dataset = await resolve_training_file(session, created.id)
        assert (dataset.source, dataset.status, dataset.group_count, dataset.trajectory_count) == (
            "file",
            "ready",
            2,
            4,
        )
        assert dataset.trainable_turns == 3
        groups = await list_group_rows(session, dataset.id)
    assert [g.scenario_id for g in groups] == ["s1", "s1"]
    assert groups[0].rewards == [1.0, 0.0]
    assert (
        groups[0].trajectories[0]["messages_and_choices"][2]["message"]["refusal"] is None
    )  # ART's Choice dump

    deleted = await openai_client.files.delete(created.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        await openai_client.files.retrieve(created.id)
    async with app_state(app).sessionmaker() as session:
        with pytest.raises(NotFound) as caught:
            await resolve_training_file(session, created.id)
        assert (caught.value.param, caught.value.code) == ("training_file", "file_not_found")
        assert await session.scalar(sa.select(sa.func.count()).select_from(DatasetGroup)) == 0


@pytest.mark.parametrize(
    ("content", "says", "code"),
    [
        (
            jsonl(*GOOD.splitlines()[:1], b'{"trajectories": [', *GOOD.splitlines()[1:]),
            "line 2: invalid JSON",
            "invalid_json",
        ),
        (
            jsonl({"trajectories": [trajectory(1.0), {**trajectory(0.0), "reward": "high"}]}),
            "line 1: trajectories[1].reward: must be a finite number",
            "invalid_reward",
        ),
        (
            jsonl(trajectory(1.0)),
            "line 1: missing key 'trajectories' (this looks like one trajectory",
            "missing_trajectories",
        ),
        (jsonl([trajectory(1.0)]), "line 1: expected a JSON object", "invalid_file"),
        (
            jsonl(
                {
                    "trajectories": [
                        {**trajectory(1.0), "messages_and_choices": [{"role": "robot", "content": "x"}]}
                    ]
                }
            ),
            "trajectories[0].messages_and_choices[0].role: unrecognized role 'robot'",
            "unrecognized_role",
        ),
        (
            jsonl({"trajectories": [{"messages": [], "reward": 1}]}),
            "found 'messages'; ART calls it messages_and_choices",
            "missing_messages_list",
        ),
        (
            jsonl({"trajectories": [{**trajectory(1.0), "metadata": {"tags": ["a"]}}]}),
            "trajectories[0].metadata.tags: values must be strings, numbers, booleans or null",
            "invalid_trajectory",
        ),
        (
            jsonl(
                {
                    "trajectories": [
                        {**trajectory(1.0), "messages_and_choices": [{**CHOICE, "finish_reason": "x"}]}
                    ]
                }
            ),
            "invalid Choice: finish_reason must be one of",
            "invalid_choice",
        ),
        (b"\n\n", "the file holds no trajectory group", "empty_file"),
        (b'{"trajectories": [\xff]}\n', "line 1: not valid UTF-8", "invalid_encoding"),
    ],
)
async def test_a_malformed_file_is_refused_naming_the_first_bad_line(
    openai_client: openai.AsyncOpenAI, app: FastAPI, content: bytes, says: str, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.files.create(file=("bad.jsonl", content), purpose="fine-tune")
    error = caught.value.body
    assert isinstance(error, dict)
    assert says in error["message"]
    assert (error["param"], error["code"]) == ("file", code)
    # nothing of the file is stored: no file, no dataset, no raw bytes
    assert [f async for f in openai_client.files.list()] == []
    async with app_state(app).sessionmaker() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Dataset)) == 0
        assert await session.scalar(sa.select(sa.func.count()).select_from(FileChunk)) == 0


async def test_blank_lines_and_a_byte_order_mark_are_accepted(
    openai_client: openai.AsyncOpenAI, worker: Worker
) -> None:
    created = await openai_client.files.create(
        file=("g.jsonl", b"\xef\xbb\xbf" + GOOD + b"\n\n"), purpose="fine-tune"
    )
    assert (await processed(openai_client, created.id)).status == "processed"


async def test_a_purpose_other_than_fine_tune_is_a_400(openai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.files.create(file=("g.jsonl", GOOD), purpose="assistants")
    assert isinstance(caught.value.body, dict)
    assert (caught.value.body["param"], caught.value.body["code"]) == ("purpose", "invalid_purpose")


async def test_files_list_pages_newest_first(openai_client: openai.AsyncOpenAI) -> None:
    ids = [
        (await openai_client.files.create(file=(f"{i}.jsonl", GOOD), purpose="fine-tune")).id
        for i in range(3)
    ]
    page = await openai_client.files.list(limit=2)
    assert [f.id for f in page.data] == ids[::-1][:2]
    assert page.has_more is True
    assert [f.id async for f in openai_client.files.list(limit=2)] == ids[::-1]
    assert [f.id async for f in openai_client.files.list(order="asc", purpose="fine-tune")] == ids
    assert [f async for f in openai_client.files.list(purpose="batch")] == []
