"""`--help` answers the operator's questions: defaults, environment variables, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from app.cli import build_parser
from app.cli.exit_codes import MEANINGS, ExitCode


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    found = {prefix: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_commands(sub, (*prefix, name)))
    return found


def _help(parser: argparse.ArgumentParser) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        parser.print_help()
    return " ".join(buffer.getvalue().split())  # argparse wraps lines: compare words


COMMANDS = _commands(build_parser())


def test_every_command_is_reachable() -> None:
    names = {" ".join(c) for c in COMMANDS if c}
    for expected in (
        "jobs list",
        "jobs show",
        "jobs cancel",
        "jobs follow",
        "datasets list",
        "datasets show",
        "models list",
        "aliases set",
    ):
        assert expected in names


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=lambda c: " ".join(c) or "training-control")
def test_every_option_shows_its_default_and_every_command_its_exit_codes(command: tuple[str, ...]) -> None:
    parser = COMMANDS[command]
    text = _help(parser)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or not action.option_strings:
            continue
        formatter = parser._get_formatter()
        assert "[default:" in (formatter._get_help_string(action) or ""), (command, action.option_strings)
    assert "exit codes:" in text
    assert " 0 success" in text


def test_options_that_read_the_environment_say_which_variable() -> None:
    text = _help(COMMANDS[("jobs", "follow")])
    assert (
        "--base-url URL the service's URL (…/v1 accepted) [default: http://127.0.0.1:8000] [env: TRAINING_CONTROL_URL]"
        in text
    )
    assert (
        "--api-key KEY a Bearer key of the service (API_KEYS or `keys create`) [default: none] [env: TRAINING_CONTROL_API_KEY]"
        in text
    )


def test_the_help_never_shows_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINING_CONTROL_API_KEY", "tc-very-secret-key")
    monkeypatch.setenv("TRAINING_CONTROL_URL", "http://elsewhere:9000")
    parser = build_parser()
    follow = _commands(parser)[("jobs", "follow")]
    text = _help(follow)
    assert "tc-very-secret-key" not in text
    assert "[default: http://127.0.0.1:8000] [env: TRAINING_CONTROL_URL]" in text
    args = parser.parse_args(["jobs", "follow", "ftjob-x"])
    assert (args.base_url, args.api_key) == ("http://elsewhere:9000", "tc-very-secret-key")


def test_the_service_commands_list_the_settings_they_read() -> None:
    for command in (("serve",), ("worker",), ("migrate",), ("keys", "create")):
        assert "DATABASE_URL" in _help(COMMANDS[command]), command
        assert "MIGRATE_ON_START" in _help(COMMANDS[command]), command


def test_the_top_level_help_lists_every_exit_code() -> None:
    text = _help(COMMANDS[()])
    for code in ExitCode:
        assert f"{int(code)} {' '.join(MEANINGS[code].split())}" in text, code
