"""Development commands: the W&B emulator and the demo. Their modules live in app_dev/ (not in
the production image) and are imported only when these commands run."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.exit_codes import ExitCode
from app.cli.service import Refusal, listen
from app.logs import configure_logging

DEV_TOOL_MISSING = (
    "{command}: `{command}` is a development tool (app_dev/), not part of this installation "
    "(the production image leaves it out); run it from a source checkout after "
    "`pip install -e '.[dev,demo]'`"
)


def _dev_tool_missing(command: str, exc: ModuleNotFoundError) -> Refusal:
    """The dev tools (app_dev/ and the `demo` extra) are absent: say so in one line."""
    if not (exc.name or "").startswith(("app_dev", "rich")):
        raise exc
    return Refusal(DEV_TOOL_MISSING.format(command=command), ExitCode.USAGE)


def cmd_emulator(args: argparse.Namespace) -> int:
    # app/ imports the development tools (app_dev/) here and in cmd_demo only, lazily.
    try:
        from app_dev.emulator import EmulatorConfig, EmulatorState
        from app_dev.emulator.server import base_url_of, serve_forever
    except ModuleNotFoundError as exc:
        raise _dev_tool_missing("emulator", exc) from None

    try:
        config = EmulatorConfig(
            pace_s=args.pace_s,
            gradient_steps=args.gradient_steps,
            api_key=args.api_key or None,
            default_entity=args.entity,
            stream_chunks=args.stream_chunks,
        )
    except ValueError as exc:
        raise Refusal(f"emulator: {exc}", ExitCode.USAGE) from None
    sock = listen(args.host, args.port)
    configure_logging(args.log_level.upper(), "console")
    print(f"W&B Training API emulator listening on {base_url_of(sock)}", flush=True)
    # Returns after a graceful stop on Ctrl-C; on SIGTERM uvicorn shuts down, then re-raises it.
    serve_forever(EmulatorState(config), sock, log_level=args.log_level)
    return ExitCode.OK


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from app_dev.demo.output import Reporter
        from app_dev.demo.runner import Demo, DemoOptions
    except ModuleNotFoundError as exc:
        raise _dev_tool_missing("demo", exc) from None

    options = DemoOptions(
        workdir=Path(args.workdir).resolve(),
        windows=args.windows,
        agents=args.agents,
        seed=args.seed,
        pace_s=args.pace_s,
        babylon_db=args.babylon_db,
        keep_running=args.keep_running,
        rollout=args.rollout,
    )
    return Demo(options, Reporter(json_mode=args.json)).run()
