"""`training-control` (also `python -m app`): serve | worker | migrate | emulator | demo | keys."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from app.config import NO_API_KEY_MESSAGE, ConfigError, Settings, load_settings
from app.logs import configure_logging


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise SystemExit(f"training-control: {exc}") from None


def _migrate(settings: Settings, revision: str = "head") -> None:
    from app import migrations

    migrations.upgrade(settings.database_url, revision, lock_timeout_s=settings.db.migrate_lock_timeout_s)


async def _active_key_count(settings: Settings) -> int:
    from app.db import create_engine, create_sessionmaker
    from app.keys.service import count_active_keys

    engine = create_engine(settings, pool=False)
    try:
        async with create_sessionmaker(engine)() as session:
            return await count_active_keys(session)
    finally:
        await engine.dispose()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.migrate_on_start:
        _migrate(settings)
    if settings.environment != "development" and not settings.api_keys:
        # The lifespan refuses too; checking here gives one clear line instead of uvicorn's
        # "Application startup failed" with a traceback.
        if asyncio.run(_active_key_count(settings)) == 0:
            print(f"training-control: {NO_API_KEY_MESSAGE}", file=sys.stderr)
            return 2
    options = {
        "host": args.host,
        "port": args.port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": True,
    }
    if args.workers == 1:
        from app.main import create_app

        # The settings already read (and the W&B key already scrubbed from os.environ) are the
        # app's: re-reading the environment would find the key gone.
        uvicorn.run(create_app(settings), **options)
    else:
        # Worker processes import the app and read their settings themselves, so the key must
        # stay in this supervisor's environment for them; each worker scrubs its own copy.
        secrets_for_workers = {"WANDB_API_KEY": settings.wandb_api_key} if settings.wandb_api_key else {}
        os.environ.update({k: v.get_secret_value() for k, v in secrets_for_workers.items()})
        uvicorn.run("app.main:app", workers=args.workers, **options)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app.main import install_game_adapters
    from app.worker.standalone import run_worker

    install_game_adapters()  # the worker builds the games' datasets and hands them their jobs

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    return asyncio.run(run_worker(settings))


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    _migrate(settings, args.revision)
    print(f"database at {args.revision}")
    return 0


DEV_TOOL_MISSING = (
    "training-control {command}: `{command}` is a development tool (app_dev/), not part of this "
    "installation (the production image leaves it out); run it from a source checkout after "
    "`pip install -e '.[dev,demo]'`"
)


def _dev_tool_missing(command: str, exc: ModuleNotFoundError) -> int:
    """The dev tools (app_dev/ and the `demo` extra) are absent: say so in one line."""
    if not (exc.name or "").startswith(("app_dev", "rich")):
        raise exc
    print(DEV_TOOL_MISSING.format(command=command), file=sys.stderr)
    return 2


def cmd_emulator(args: argparse.Namespace) -> int:
    # app/ imports the development tools (app_dev/) here and in cmd_demo only, lazily.
    try:
        from app_dev.emulator import EmulatorConfig, EmulatorState
        from app_dev.emulator.server import base_url_of, bind_socket, serve_forever
    except ModuleNotFoundError as exc:
        return _dev_tool_missing("emulator", exc)

    try:
        config = EmulatorConfig(
            pace_s=args.pace_s,
            gradient_steps=args.gradient_steps,
            api_key=args.api_key or None,
            default_entity=args.entity,
            stream_chunks=args.stream_chunks,
        )
    except ValueError as exc:
        print(f"training-control emulator: {exc}", file=sys.stderr)
        return 2
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"training-control emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    configure_logging(args.log_level.upper(), "console")
    print(f"W&B Training API emulator listening on {base_url_of(sock)}", flush=True)
    # Returns after a graceful stop on Ctrl-C; on SIGTERM uvicorn shuts down, then re-raises it.
    serve_forever(EmulatorState(config), sock, log_level=args.log_level)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        from app_dev.demo.output import Reporter
        from app_dev.demo.runner import Demo, DemoOptions
    except ModuleNotFoundError as exc:
        return _dev_tool_missing("demo", exc)

    options = DemoOptions(
        workdir=Path(args.workdir).resolve(),
        windows=args.windows,
        agents=args.agents,
        seed=args.seed,
        pace_s=args.pace_s,
        babylon_db=args.babylon_db,
        keep_running=args.keep_running,
    )
    return Demo(options, Reporter(json_mode=args.json)).run()


def cmd_keys(args: argparse.Namespace) -> int:
    from app.db import create_engine, create_sessionmaker
    from app.errors import NotFound
    from app.keys import service

    settings = _settings()
    configure_logging("WARNING", settings.log_format)

    async def run() -> int:
        if settings.migrate_on_start:
            await asyncio.to_thread(_migrate, settings)
        engine = create_engine(settings, pool=False)
        try:
            async with create_sessionmaker(engine)() as session:
                if args.keys_command == "create":
                    created = await service.create_key(session, args.name)
                    await session.commit()
                    print(created.key)
                    print(
                        f"created key {created.id} ({created.name}); it is shown only this once",
                        file=sys.stderr,
                    )
                elif args.keys_command == "revoke":
                    try:
                        revoked = await service.revoke_key(session, args.key)
                    except NotFound as exc:
                        print(f"training-control keys revoke: {exc.message}", file=sys.stderr)
                        return 1
                    await session.commit()
                    for row in revoked:
                        print(f"revoked {row.id} ({row.name})")
                else:
                    for row in await service.list_keys(session):
                        state = "revoked" if row.revoked_at else "active"
                        print(f"{row.id}\t{row.name}\t{row.prefix}…\t{state}\t{row.created_at.isoformat()}")
        finally:
            await engine.dispose()
        return 0

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="training-control",
        description="Babylon agent training service: trajectories → scores → datasets → W&B Serverless RL → gateway.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the API (migrates first unless MIGRATE_ON_START=false)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a standalone job worker (no HTTP)")
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser(
        "migrate", help="upgrade the database schema; safe from several processes at once"
    )
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.set_defaults(func=cmd_migrate)

    emulator = sub.add_parser(
        "emulator", help="run the W&B Training API emulator (development and tests only)"
    )
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8900, help="0 picks a free port (the URL is printed)")
    emulator.add_argument(
        "--pace-s", type=float, default=0.0, help="seconds between a training job's events (0 = all at once)"
    )
    emulator.add_argument("--gradient-steps", type=int, default=2, help="gradient_step events per job")
    emulator.add_argument(
        "--api-key", default=None, help="accept only this Bearer key (default: any non-empty key)"
    )
    emulator.add_argument("--entity", default="emulator-entity", help="entity for models created without one")
    emulator.add_argument("--stream-chunks", type=int, default=4, help="content pieces per streamed answer")
    emulator.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    emulator.set_defaults(func=cmd_emulator)

    demo = sub.add_parser("demo", help="run the whole loop on SQLite and the emulator, no keys needed")
    demo.add_argument("--json", action="store_true", help="print a machine-readable summary instead")
    demo.add_argument("--workdir", default="./data/demo", help="where the demo keeps its database and logs")
    demo.add_argument(
        "--windows", type=int, default=3, choices=range(1, 25), metavar="1-24", help="hourly windows"
    )
    demo.add_argument(
        "--agents", type=int, default=5, choices=range(3, 6), metavar="3-5", help="agents per window"
    )
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--pace-s", type=float, default=0.2, help="emulated seconds per training event")
    demo.add_argument(
        "--babylon-db",
        metavar="URL",
        help="write the game into this Postgres (the game's schema) and read it back",
    )
    demo.add_argument("--keep-running", action="store_true", help="keep the service up after the demo")
    demo.set_defaults(func=cmd_demo)

    keys = sub.add_parser("keys", help="manage client API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key and print it once (only its hash is stored)")
    create.add_argument("name")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id, or all active keys with a name")
    revoke.add_argument("key", metavar="ID_OR_NAME")
    keys_sub.add_parser("list", help="list keys (never their values)")
    keys.set_defaults(func=cmd_keys)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from alembic.util import CommandError
    from sqlalchemy.exc import DBAPIError, OperationalError

    from app.migrations import MigrationLockTimeout

    try:
        code: int = args.func(args)
    except (OperationalError, DBAPIError, OSError) as exc:
        # One readable line for an unreachable database, not a driver traceback.
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"training-control: database error: {reason}", file=sys.stderr)
        return 1
    except (CommandError, MigrationLockTimeout) as exc:
        print(f"training-control: migration failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
