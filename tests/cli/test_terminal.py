"""Plain terminal output (app/cli/terminal.py): bars, tables, a line redrawn on a terminal."""

from __future__ import annotations

import io
import subprocess
import sys

from app.cli import terminal


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_fills_in_proportion_and_is_empty_without_a_total() -> None:
    assert terminal.bar(0, 4, width=8) == "▕░░░░░░░░▏"
    assert terminal.bar(1, 4, width=8) == "▕██░░░░░░▏"
    assert terminal.bar(4, 4, width=8) == "▕████████▏"
    assert terminal.bar(9, 4, width=8) == "▕████████▏"
    assert terminal.bar(3, None, width=8) == "▕░░░░░░░░▏"


def test_a_table_aligns_columns_without_trailing_spaces() -> None:
    text = terminal.table(
        [("ftjob-1", "running", None), ("ftjob-22", "succeeded", 0.5)], ["ID", "STATUS", "X"]
    )
    assert text.splitlines() == [
        "ID        STATUS     X",
        "ftjob-1   running    -",
        "ftjob-22  succeeded  0.5",
    ]


def test_fields_align_values_and_leave_out_missing_ones() -> None:
    assert terminal.fields([("id", "ds-1"), ("error", None), ("trainable turns", 9)]).splitlines() == [
        "id:              ds-1",
        "trainable turns: 9",
    ]


def test_a_live_line_redraws_in_place_on_a_terminal_and_prints_once_in_a_pipe() -> None:
    tty = FakeTerminal()
    live = terminal.LiveLine(tty)
    live.update("step 1/2 ▕█░▏")
    live.update("step 1/2 ▕██▏")
    live.finish("step 1/2 done")
    written = tty.getvalue()
    assert written.count("\r") >= 3
    assert written.endswith("\rstep 1/2 done\n")

    pipe = io.StringIO()
    live = terminal.LiveLine(pipe)
    live.update("step 1/2 ▕█░▏")
    live.finish("step 1/2 done")
    assert pipe.getvalue() == "step 1/2 done\n"


NO_RICH = """
import socket, sys
sys.modules["rich"] = None  # as if the demo-only extra were not installed: `import rich` fails
from app.cli import main
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{s.getsockname()[1]}"
code = main(["jobs", "list", "--base-url", url])
assert not any(name == "rich" or name.startswith("rich.") for name, m in sys.modules.items() if m), "rich"
sys.exit(code)
"""


def test_the_operator_commands_work_without_rich() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", NO_RICH], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 5, proc.stderr  # reached the HTTP call: the service is not there
    assert "cannot reach the service" in proc.stderr
