"""The training file: its documented example uploads and trains, the file object counts what
ART will train, and a file with nothing trainable is refused at upload, naming the fix."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi import FastAPI

from app.files.format import TRAINING_FILE_EXAMPLE, TRAINING_FILE_EXAMPLE_LINE
from app.files.jsonl import GroupReader, LineError, NoTrainableTurns
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.service import StartService, wait_for_job

README = Path(__file__).resolve().parents[2] / "README.md"


def _plain(trajectory: dict[str, Any]) -> dict[str, Any]:
    """The same trajectory with its Choice turned into a plain assistant message (context only)."""
    entries = [
        {"role": "assistant", "content": e["message"]["content"]} if "message" in e else e
        for e in trajectory["messages_and_choices"]
    ]
    return {**trajectory, "messages_and_choices": entries}


def test_the_example_is_a_group_of_two_trajectories_with_one_sampled_choice_each() -> None:
    trajectories = TRAINING_FILE_EXAMPLE["trajectories"]
    assert len(trajectories) == 2
    for trajectory in trajectories:
        choices = [e for e in trajectory["messages_and_choices"] if "message" in e]
        assert len(choices) == 1
        assert choices[0]["logprobs"]["content"]
    assert len({t["reward"] for t in trajectories}) == 2  # a group that teaches something
    reader = GroupReader(io.BytesIO(TRAINING_FILE_EXAMPLE_LINE.encode() + b"\n"))
    assert len(reader.next_batch(10)) == 1
    reader.check_trainable()
    assert (reader.groups, reader.trajectories, reader.trainable_turns) == (1, 2, 2)


def test_the_readme_and_the_openapi_carry_the_same_complete_line(app: FastAPI) -> None:
    readme = README.read_text()
    section = readme.split("## The training file", 1)[1].split("\n## ", 1)[0]
    lines = re.findall(r"```json\n(.*?)\n```", section, flags=re.S)
    assert lines == [TRAINING_FILE_EXAMPLE_LINE]
    assert json.loads(lines[0]) == TRAINING_FILE_EXAMPLE
    upload = app.openapi()["paths"]["/v1/files"]["post"]["description"]
    assert TRAINING_FILE_EXAMPLE_LINE in upload
    assert "logprobs" in upload


def test_a_file_without_groups_or_trainable_turns_fails_the_check() -> None:
    empty = GroupReader(io.BytesIO(b"\n\n"))
    empty.next_batch(10)
    with pytest.raises(LineError, match="no trajectory group"):
        empty.check_trainable()
    plain = {
        **TRAINING_FILE_EXAMPLE,
        "trajectories": [_plain(t) for t in TRAINING_FILE_EXAMPLE["trajectories"]],
    }
    reader = GroupReader(io.BytesIO(json.dumps(plain).encode() + b"\n"))
    reader.next_batch(10)
    with pytest.raises(NoTrainableTurns) as refused:
        reader.check_trainable()
    assert str(refused.value).startswith("the file has no trainable turns (1 groups, 2 trajectories")


async def test_the_file_object_reports_groups_and_trainable_turns(openai_client: openai.AsyncOpenAI) -> None:
    second = {
        **TRAINING_FILE_EXAMPLE,
        "trajectories": [
            TRAINING_FILE_EXAMPLE["trajectories"][0],
            _plain(TRAINING_FILE_EXAMPLE["trajectories"][1]),
        ],
    }
    content = (TRAINING_FILE_EXAMPLE_LINE + "\n" + json.dumps(second) + "\n").encode()
    created = await openai_client.files.create(file=("two.jsonl", content), purpose="fine-tune")
    extra = created.model_extra or {}
    assert (extra["group_count"], extra["trajectory_count"], extra["trainable_turns"]) == (2, 4, 3)
    listed = (await openai_client.files.list()).data[0].model_extra or {}
    assert listed["trainable_turns"] == 3


async def test_a_file_with_no_trainable_turn_is_refused_at_upload_naming_the_fix(
    openai_client: openai.AsyncOpenAI,
) -> None:
    plain = {
        **TRAINING_FILE_EXAMPLE,
        "trajectories": [_plain(t) for t in TRAINING_FILE_EXAMPLE["trajectories"]],
    }
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.files.create(
            file=("context-only.jsonl", (json.dumps(plain) + "\n").encode()), purpose="fine-tune"
        )
    error: Any = refused.value.body  # the SDK keeps the envelope's "error" object
    assert (error["code"], error["param"]) == ("no_trainable_data", "file")
    message = error["message"]
    assert message.startswith("invalid JSONL file 'context-only.jsonl': the file has no trainable turns")
    assert "ART trains only assistant turns that were sampled with logprobs" in message
    assert "logprobs=true" in message
    assert (await openai_client.files.list()).data == []  # nothing stored


async def test_the_documented_example_trains_on_the_emulator(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    async with start_service() as svc:
        uploaded = await svc.sdk.files.create(
            file=("example.jsonl", (TRAINING_FILE_EXAMPLE_LINE + "\n").encode()), purpose="fine-tune"
        )
        job = await svc.sdk.fine_tuning.jobs.create(
            model="OpenPipe/Qwen3-14B-Instruct", training_file=uploaded.id, suffix="example"
        )
        done = await wait_for_job(svc.sdk, job.id)
    assert done.status == "succeeded", done.error
    sent = emulator.jobs("example")[0]["trajectory_groups"][0]["trajectories"]
    assert [t["reward"] for t in sent] == [1.0, -0.5]
    assert sent[0]["messages_and_choices"][-1]["logprobs"]["content"][0]["token"] == "YES"
