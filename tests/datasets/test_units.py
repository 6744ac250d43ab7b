"""Small pieces of the pipeline: the binary COPY decoder, ART's dump shape, conversations."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from app.babylon.copy_binary import SIGNATURE, BinaryCopyDecoder, CopyFormatError
from app.trajectories.art_shape import count_turns, normalize_choice, trajectory_dict
from app.trajectories.context import ConversationBuilder


def copy_stream(rows: list[tuple[bytes | None, ...]]) -> bytes:
    out = bytearray(SIGNATURE + struct.pack("!ii", 0, 4) + b"ext!")
    for row in rows:
        out += struct.pack("!h", len(row))
        for field in row:
            if field is None:
                out += struct.pack("!i", -1)
            else:
                out += struct.pack("!i", len(field)) + field
    out += struct.pack("!h", -1)
    return bytes(out)


ROWS = [(b'["t1","a"]', b"[]"), (b'["t2","a"]', None), (b"", "é🎲".encode() * 50)]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 10_000])
def test_binary_copy_rows_survive_any_chunking(chunk: int) -> None:
    data = copy_stream(ROWS)
    decoder = BinaryCopyDecoder()
    rows: list[Any] = []
    for i in range(0, len(data), chunk):
        rows.extend(decoder.feed(bytearray(data[i : i + chunk])))
    decoder.check_complete()
    assert rows == ROWS
    assert decoder.finished
    assert all(type(f) is bytes for r in rows for f in r if f is not None)


def test_a_stream_cut_mid_row_is_detected() -> None:
    decoder = BinaryCopyDecoder()
    decoder.feed(copy_stream(ROWS)[:-20])
    with pytest.raises(CopyFormatError):
        decoder.check_complete()
    with pytest.raises(CopyFormatError):
        BinaryCopyDecoder().feed(b"not a copy stream at all")


@pytest.mark.filterwarnings("ignore")
def test_trajectory_dicts_equal_arts_own_dump() -> None:
    import art
    from art.trajectories import History
    from openai.types.chat.chat_completion import Choice

    raw_choice = {
        "index": 0,
        "finish_reason": "length",
        "message": {"role": "assistant", "content": "hi", "tool_calls": None},
        "logprobs": {
            "content": [{"token": "token_id:1", "bytes": [104], "logprob": -1.0, "top_logprobs": []}]
        },
    }
    messages = [{"role": "user", "content": "hello"}, normalize_choice(raw_choice)]
    ours = trajectory_dict(
        messages,
        reward=1,
        metadata={"scenario_id": "s", "n": 1, "none": None},
        metrics={"steps": 2, "ok": True},
        additional_histories=[{"messages_and_choices": [{"role": "user", "content": "x"}], "tools": None}],
        logs=["built"],
    )
    theirs = art.Trajectory(
        messages_and_choices=[messages[0], Choice.model_validate(raw_choice)],
        reward=1,
        metadata={"scenario_id": "s", "n": 1, "none": None},
        metrics={"steps": 2, "ok": True},
        additional_histories=[History(messages_and_choices=[{"role": "user", "content": "x"}])],
        logs=["built"],
    ).model_dump(mode="json")
    assert ours == theirs
    assert count_turns(ours).trainable == 1


def test_conversations_merge_repeated_prefixes_and_split_fresh_requests() -> None:
    builder = ConversationBuilder()
    sys, u1, u2 = (
        {"role": "system", "content": "s"},
        {"role": "user", "content": "1"},
        {"role": "user", "content": "2"},
    )
    builder.add([sys, u1], {"role": "assistant", "content": "a1"})
    builder.add([sys, u1, {"role": "assistant", "content": "a1"}, u2], {"role": "assistant", "content": "a2"})
    builder.add([sys, u1], {"role": "assistant", "content": "retry"})  # same request again: a new sample
    main, tools, histories = builder.build()
    assert main == [
        sys,
        u1,
        {"role": "assistant", "content": "a1"},
        u2,
        {"role": "assistant", "content": "a2"},
    ]
    assert tools is None
    assert histories == [
        {"messages_and_choices": [sys, u1, {"role": "assistant", "content": "retry"}], "tools": None}
    ]


def test_the_collector_is_paused_while_any_build_runs_and_restored_after() -> None:
    import gc

    from app.babylon.dataset_build import cyclic_gc_paused

    assert gc.isenabled()
    with cyclic_gc_paused():
        with cyclic_gc_paused():  # two builds at once
            assert not gc.isenabled()
        assert not gc.isenabled()  # the first is still running
    assert gc.isenabled()
    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()  # an app that chose to run without it keeps its choice
    finally:
        gc.enable()
