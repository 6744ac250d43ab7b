"""Reading a fine-tune JSONL of trajectory groups, one group per line (ART's
`TrajectoryGroup` shape: `{"trajectories": [...], "metadata": {"scenario_id": ...}}`).

Lines are validated one at a time as they are read, so memory holds one line; the first bad
line stops the upload with its 1-based number and the path of the bad field. The reader counts
groups, trajectories and trainable turns as it goes, and `GroupReader.check_trainable` refuses
a file that ART could not train on at all, with what to change (the format is in
`app/files/format.py` and the README's "The training file").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from app.trajectories.art_shape import count_turns
from app.trajectories.validation import Problem, normalize_trajectory

GROUP_KEYS = frozenset({"trajectories", "metadata", "metrics", "logs", "exceptions"})


class LineError(Exception):
    def __init__(self, line: int, message: str, code: str = "invalid_file") -> None:
        super().__init__(line, message, code)
        self.line = line
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class NoTrainableTurns(LineError):
    """The whole file is well-formed but holds nothing ART trains on."""

    def __init__(self, line: int, groups: int, trajectories: int) -> None:
        super().__init__(line, no_trainable_turns_message(groups, trajectories), "no_trainable_data")

    def __str__(self) -> str:
        return self.message


def no_trainable_turns_message(groups: int, trajectories: int) -> str:
    # The explanation a job on such data gives (app/jobs/service.py), with the fix for a file.
    return (
        f"the file has no trainable turns ({groups} groups, {trajectories} trajectories, 0 trainable "
        "turns). ART trains only assistant turns that were sampled with logprobs: an entry of "
        'messages_and_choices that is a Choice ({"finish_reason", "index", "message": {"role": '
        '"assistant", ...}, "logprobs": {"content": [...]}}), not a plain assistant message, '
        "which is context only. Write each turn to train as the Choice that /v1/chat/completions "
        "returned with logprobs=true (the gateway captures them for you when the request carries "
        'metadata.trajectory_id); the README\'s "The training file" shows a complete line.'
    )


@dataclass(frozen=True)
class ParsedGroup:
    line: int
    scenario_id: str
    trajectories: list[dict[str, Any]]


def parse_group_line(line_number: int, raw: bytes) -> ParsedGroup:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LineError(line_number, f"invalid JSON: {exc}", "invalid_json") from None
    if not isinstance(value, dict):
        kind = "an array" if isinstance(value, list) else type(value).__name__
        raise LineError(
            line_number, f'expected a JSON object with "trajectories" (one group per line), got {kind}'
        )
    unknown = sorted(set(value) - GROUP_KEYS)
    if "trajectories" not in value:
        hint = (
            ' (this looks like one trajectory; wrap it as {"trajectories": [...]})'
            if "messages_and_choices" in value
            else ""
        )
        raise LineError(line_number, f"missing key 'trajectories'{hint}", "missing_trajectories")
    if unknown:
        raise LineError(line_number, f"unrecognized key {unknown[0]!r}", "unrecognized_key")
    items = value["trajectories"]
    if not isinstance(items, list) or not items:
        raise LineError(line_number, "'trajectories' must be a non-empty array", "missing_trajectories")
    metadata = value.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise LineError(line_number, "'metadata' must be an object")
    trajectories = []
    for i, item in enumerate(items):
        try:
            trajectories.append(normalize_trajectory(item, f"trajectories[{i}]"))
        except Problem as problem:
            raise LineError(line_number, str(problem), problem.code) from None
    scenario = metadata.get("scenario_id") or trajectories[0]["metadata"].get("scenario_id")
    return ParsedGroup(line_number, str(scenario)[:200] if scenario else f"line-{line_number}", trajectories)


class Lines(Protocol):
    def readline(self) -> bytes: ...


class GroupReader:
    """Iterates a binary file object's groups, in batches (call from a worker thread)."""

    def __init__(self, stream: Lines) -> None:
        self._stream = stream
        self.line = 0
        self.bytes = 0
        self.groups = 0
        self.trajectories = 0
        self.trainable_turns = 0

    def next_batch(self, max_groups: int) -> list[ParsedGroup]:
        groups: list[ParsedGroup] = []
        while len(groups) < max_groups:
            raw = self._stream.readline()
            if not raw:
                break
            self.line += 1
            self.bytes += len(raw)
            if self.line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark
            if not raw.strip():
                continue
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise LineError(
                    self.line, f"not valid UTF-8 (byte {exc.start})", "invalid_encoding"
                ) from None
            group = parse_group_line(self.line, raw)
            self.groups += 1
            self.trajectories += len(group.trajectories)
            self.trainable_turns += sum(count_turns(t).trainable for t in group.trajectories)
            groups.append(group)
        return groups

    def check_trainable(self) -> None:
        """After the last line: refuse a file with no group, or with no turn ART can train."""
        if self.groups == 0:
            raise LineError(max(self.line, 1), "the file holds no trajectory group", "empty_file")
        if self.trainable_turns == 0:
            raise NoTrainableTurns(self.line, self.groups, self.trajectories)
