"""What the demo prints: rich in a terminal, plain lines when piped, one JSON document with --json."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class Reporter:
    def __init__(self, *, json_mode: bool) -> None:
        self.json_mode = json_mode
        # Progress bars only make sense on a terminal; piped output stays plain and readable.
        self.console = Console(stderr=False, highlight=False, force_terminal=None)
        self.fancy = not json_mode and self.console.is_terminal

    def _print(self, text: str, style: str | None = None) -> None:
        if self.json_mode:
            return
        if self.fancy:
            self.console.print(text, style=style)
        else:
            print(text, flush=True)

    def stage(self, title: str) -> None:
        self._print(f"\n{title}", style="bold cyan")

    def ok(self, message: str) -> None:
        self._print(f"  ✓ {message}", style="green")

    def fail(self, message: str) -> None:
        if self.json_mode:
            print(message, file=sys.stderr, flush=True)
        else:
            self._print(f"  ✗ {message}", style="bold red")

    def detail(self, message: str) -> None:
        self._print(message, style="dim")

    def table(self, title: str, rows: list[tuple[str, Any]]) -> None:
        if self.json_mode:
            return
        if self.fancy:
            table = Table(title=title, show_header=False, title_justify="left")
            table.add_column(style="bold")
            table.add_column()
            for key, value in rows:
                table.add_row(str(key), str(value))
            self.console.print(table)
        else:
            print(f"  {title}")
            for key, value in rows:
                print(f"    {key}: {value}")

    def lines(self, lines: list[str]) -> None:
        for line in lines:
            self._print(f"  {line}")

    def refuse(self, message: str, summary: dict[str, Any]) -> None:
        """Nothing was started: one line on stderr (and the summary with --json)."""
        print(f"training-control demo: {message}", file=sys.stderr, flush=True)
        if self.json_mode:
            print(json.dumps(summary, indent=2, default=str), flush=True)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        if not self.fancy:
            done = [0]

            def advance_plain(n: int) -> None:
                before = done[0] * 4 // max(total, 1)
                done[0] += n
                # piped output: a line per quarter, not per item
                if not self.json_mode and (done[0] * 4 // max(total, 1) > before or done[0] >= total):
                    print(f"    {description}: {done[0]}/{total}", flush=True)

            yield advance_plain
            return
        with Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.json_mode:
            print(json.dumps(summary, indent=2, default=str), flush=True)
            return
        seconds = summary.get("seconds", 0)
        if summary.get("interrupted"):
            # Ctrl-C, possibly while --keep-running served a demo whose stages all succeeded:
            # the run ends interrupted, never "every stage succeeded" as well.
            done = sum(1 for stage in summary.get("stages", {}).values() if stage.get("ok"))
            verdict, style = f"Demo interrupted after {seconds} s ({done} of 6 stages done).", "bold yellow"
        elif summary.get("ok"):
            verdict, style = f"Demo finished in {seconds} s: every stage succeeded.", "bold green"
        else:
            verdict, style = f"Demo stopped after {seconds} s: a stage failed (see above).", "bold red"
        self._print(f"\n{verdict}", style=style)
