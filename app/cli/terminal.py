"""Plain terminal output for the operator commands: aligned tables, key/value blocks, progress
bars drawn with block characters. No `rich` (a demo-only extra): a terminal gets a bar redrawn
in place, a pipe or a log file gets one finished line per step."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
from collections.abc import Sequence
from typing import Any, TextIO

BAR_WIDTH = 24


def is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(done: int, total: int | None, width: int = BAR_WIDTH) -> str:
    """`▕████████░░░░▏` for done/total; an empty frame when the total is not known yet."""
    if not total:
        return "▕" + "░" * width + "▏"
    filled = round(width * min(done, total) / total)
    return "▕" + "█" * filled + "░" * (width - filled) + "▏"


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Columns aligned to their widest cell; the last column is never padded."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(widths[i]) if i < len(row) - 1 else c for i, c in enumerate(row)]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """`key: value` lines with the values aligned; None values are left out."""
    shown = [(k, _cell(v)) for k, v in pairs if v is not None]
    width = max((len(k) for k, _ in shown), default=0)
    return "\n".join(f"{(k + ':').ljust(width + 1)} {v}" for k, v in shown)


def when(unix: int | None) -> str | None:
    if unix is None:
        return None
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return number(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def print_json(value: Any, stream: TextIO | None = None) -> None:
    print(json.dumps(value, indent=2, sort_keys=False, default=str), file=stream or sys.stdout, flush=True)


def print_json_line(value: Any, stream: TextIO | None = None) -> None:
    print(json.dumps(value, separators=(",", ":"), default=str), file=stream or sys.stdout, flush=True)


class LiveLine:
    """One line redrawn in place on a terminal (`\\r`), printed once when finished elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = is_terminal(stream)
        self._shown = False

    def update(self, text: str) -> None:
        if not self.live:
            return
        columns = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r" + text[: columns - 1].ljust(columns - 1))
        self.stream.flush()
        self._shown = True

    def finish(self, text: str) -> None:
        if self.live and self._shown:
            columns = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + " " * (columns - 1) + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._shown = False

    def interrupt(self) -> None:
        """Before printing another line: end the live one so the two do not overwrite."""
        if self.live and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
