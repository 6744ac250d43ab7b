"""The CLI in process (the subprocess tests are in tests/e2e/test_cli.py)."""

from __future__ import annotations

import sys

import pytest

from app.cli import main


@pytest.mark.parametrize(("command", "args"), [("emulator", ["--port", "0"]), ("demo", ["--json"])])
def test_dev_tools_absent_from_the_installation_are_named_in_one_line(
    command: str, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # as in the production image, which does not copy app_dev/
    for name in [m for m in sys.modules if m == "app_dev" or m.startswith("app_dev.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "app_dev", None)

    assert main([command, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"`{command}` is a development tool" in err
    assert "production image" in err


def test_the_demo_without_its_extra_says_which_one_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m.startswith(("app_dev.demo", "rich"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rich", None)

    assert main(["demo", "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "[dev,demo]" in err
