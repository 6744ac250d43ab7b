"""Reading a fine-tune JSONL of trajectory groups, one group per line (ART's
`TrajectoryGroup` shape: `{"trajectories": [...], "metadata": {"scenario_id": ...}}`).

Lines are validated one at a time as they are read, so memory holds one line; the first bad
line stops the upload with its 1-based number and the path of the bad field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

import orjson

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


class GroupReader:
    """Iterates a binary file object's groups, in batches (call from a worker thread)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.line = 0
        self.bytes = 0

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
            groups.append(parse_group_line(self.line, raw))
        return groups
