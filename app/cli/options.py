"""`--help` that answers the operator's questions: every option shows its default and, where it
has one, the environment variable it maps to; every command ends with its exit codes."""

from __future__ import annotations

import argparse
import os
import textwrap
from typing import Any

from app.cli.exit_codes import ExitCode, exit_codes_help

_ENV = "_training_control_env"
_SHOWN = "_training_control_shown_default"
_UNSHOWN = object()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends `[default: …]` and `[env: NAME]` to each option's help; keeps epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            return action.help
        takes_default = action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
        if takes_default and "[default:" not in text:
            shown = getattr(action, _SHOWN, _UNSHOWN)
            if shown is _UNSHOWN:
                shown = _describe_default(action)
            text = f"{text} [default: {shown}]" if text else f"[default: {shown}]"
        env = getattr(action, _ENV, None)
        if env:
            text += f" [env: {env}]"
        return text.replace("%", "%%")


def _describe_default(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    if isinstance(action, argparse._StoreFalseAction):
        return "on"
    if action.default is None:
        return "none"
    return str(action.default)


def option(
    parser: argparse._ActionsContainer,  # a parser or an argument group
    *flags: str,
    env: str | None = None,
    shown_default: str | None = None,
    secret: bool = False,
    **kwargs: Any,
) -> argparse.Action:
    """An option whose default comes from `env` when that variable is set (like the openai SDK's
    `OPENAI_BASE_URL`). `--help` shows the built-in default, never the environment's value, and
    never a secret."""
    if env is not None and os.environ.get(env):
        fallback = kwargs.get("default")
        kwargs["default"] = os.environ[env]
        if shown_default is None:
            shown_default = "none" if secret or fallback is None else str(fallback)
    action = parser.add_argument(*flags, **kwargs)
    if env is not None:
        setattr(action, _ENV, env)
    if shown_default is not None or secret:
        setattr(action, _SHOWN, shown_default if shown_default is not None else "none")
    return action


def subcommand(
    sub: Any,  # argparse's _SubParsersAction (private type)
    name: str,
    *,
    help: str,
    description: str | None = None,
    exit_codes: tuple[ExitCode, ...] = (),
    settings: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand whose `--help` lists the settings it reads and the exit codes it returns."""
    epilog = []
    if settings:
        epilog.append(settings)
    epilog.append(exit_codes_help(*exit_codes) if exit_codes else exit_codes_help())
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=textwrap.fill(description or help[0].upper() + help[1:] + ".", width=94),
        epilog="\n\n".join(epilog),
        formatter_class=HelpFormatter,
    )
    return parser
