"""Commands that run the service or act on its database: serve, worker, migrate, keys.

Each refusal is one line on stderr and a documented exit code (app/cli/exit_codes.py), and a
process that cannot work never half-starts: `serve` checks the port first, then migrates (or
checks the schema), then the API key, and only then starts the app and its worker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from typing import Any

from app.cli.exit_codes import ExitCode
from app.config import NO_API_KEY_MESSAGE, ConfigError, Settings, load_settings
from app.logs import configure_logging


class Refusal(Exception):
    """A command that cannot go on: `main` prints `training-control: <message>` and exits `code`."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def load_cli_settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise Refusal(str(exc), ExitCode.FAILURE) from None


def migrate_database(settings: Settings, revision: str = "head") -> None:
    from app import migrations

    migrations.upgrade(settings.database_url, revision, lock_timeout_s=settings.db.migrate_lock_timeout_s)


async def _check_schema(settings: Settings) -> None:
    from app.db import create_engine
    from app.health.schema import require_schema_at_head

    engine = create_engine(settings, pool=False)
    try:
        await require_schema_at_head(engine, wait_s=settings.db.start_wait_s)
    finally:
        await engine.dispose()


def prepare_schema(settings: Settings) -> None:
    """Migrate (MIGRATE_ON_START=true) or refuse a schema that is not at head, in one line."""
    from app.health.schema import SchemaNotAtHead

    if settings.migrate_on_start:
        migrate_database(settings)
        return
    try:
        asyncio.run(_check_schema(settings))
    except SchemaNotAtHead as exc:
        raise Refusal(str(exc), ExitCode.SCHEMA) from None


async def _active_key_count(settings: Settings) -> int:
    from app.db import create_engine, create_sessionmaker
    from app.keys.service import count_active_keys

    engine = create_engine(settings, pool=False)
    try:
        async with create_sessionmaker(engine)() as session:
            return await count_active_keys(session)
    finally:
        await engine.dispose()


def listen(host: str, port: int) -> socket.socket:
    """Bind the port before anything else happens; uvicorn then serves on this very socket, so
    nothing can take the port between the check and the start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise Refusal(
            f"cannot listen on {host}:{port}: {reason} (another process uses it? pick another with --port)",
            ExitCode.PORT_IN_USE,
        ) from None
    sock.set_inheritable(True)  # --workers > 1: uvicorn's worker processes accept on it
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = load_cli_settings()
    sock = listen(args.host, args.port)
    try:
        configure_logging(settings.log_level, settings.log_format)
        prepare_schema(settings)
        if (
            settings.environment != "development"
            and not settings.api_keys
            and asyncio.run(_active_key_count(settings)) == 0
        ):
            # The lifespan refuses too; checking here gives one line instead of uvicorn's
            # "Application startup failed" with a traceback.
            raise Refusal(NO_API_KEY_MESSAGE, ExitCode.USAGE)
        if args.workers == 1:
            from app.main import create_app

            # Migrated above: the app's lifespan only checks the schema (migrations run once per
            # `serve`). The settings already read (the W&B key already scrubbed from os.environ)
            # are the app's: re-reading the environment would find the key gone.
            app = create_app(settings.model_copy(update={"migrate_on_start": False}))
            server = uvicorn.Server(
                uvicorn.Config(app, log_config=None, access_log=False, proxy_headers=True)
            )
            server.run(sockets=[sock])
            if not server.started:
                raise Refusal("the service did not start (see the line above)", ExitCode.FAILURE)
        else:
            from uvicorn.supervisors import Multiprocess

            # Worker processes import the app and read their settings themselves: the key must
            # stay in this supervisor's environment for them (each scrubs its own copy), and they
            # must not migrate again.
            if settings.wandb_api_key:
                os.environ["WANDB_API_KEY"] = settings.wandb_api_key.get_secret_value()
            os.environ["MIGRATE_ON_START"] = "false"
            config = uvicorn.Config(
                "app.main:app", workers=args.workers, log_config=None, access_log=False, proxy_headers=True
            )
            Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
    return ExitCode.OK


def cmd_worker(args: argparse.Namespace) -> int:
    from app.health.schema import SchemaNotAtHead
    from app.main import install_extensions
    from app.worker.standalone import WorkerStartError, run_worker

    install_extensions()  # the worker builds uploads' and games' datasets and hands games their jobs
    settings = load_cli_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        return asyncio.run(run_worker(settings))
    except SchemaNotAtHead as exc:
        raise Refusal(str(exc), ExitCode.SCHEMA) from None
    except WorkerStartError as exc:  # its metrics port is taken
        raise Refusal(str(exc), ExitCode.PORT_IN_USE) from None


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_cli_settings()
    configure_logging(settings.log_level, settings.log_format)
    migrate_database(settings, args.revision)
    print(f"database at {args.revision}")
    return ExitCode.OK


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `45m`, `90s`, `2w` → seconds; Refusal naming the form otherwise."""
    value = text.strip().lower()
    unit = _DURATION.get(value[-1:]) if value else None
    number = value[:-1]
    if unit is None or not number.isdigit() or int(number) <= 0:
        raise Refusal(
            f"keys create: --expires-in {text!r} is not a duration; use a number and s, m, h, d or w (30d)",
            ExitCode.FAILURE,
        )
    return int(number) * unit


def key_options(args: argparse.Namespace) -> Any:
    """The `keys create` options as app.keys.service.KeyOptions; Refusal for a bad one."""
    import datetime as dt

    from app.keys.scopes import ALL_SCOPES, parse_scopes
    from app.keys.service import KeyOptions

    models = None
    if args.models is not None:
        models = tuple(p.strip() for value in args.models for p in value.split(",") if p.strip())
    expires_at = None
    if args.expires_in is not None:
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=parse_duration(args.expires_in))
    try:
        return KeyOptions(
            scopes=parse_scopes(args.scopes) if args.scopes else ALL_SCOPES,
            models=models,
            rpm=args.rpm,
            tpm=args.tpm,
            expires_at=expires_at,
        )
    except ValueError as exc:
        raise Refusal(f"keys create: {exc}", ExitCode.FAILURE) from None


def describe_key(row: Any) -> str:
    """One `keys list` line: id, name, prefix, state, scopes, models, limits, expiry, created."""
    from app.keys.service import key_status

    models = ",".join(row.models) if row.models is not None else "*"
    limits = f"rpm={row.rpm or '-'} tpm={row.tpm or '-'}"
    expires = row.expires_at.isoformat() if row.expires_at is not None else "never"
    return "\t".join(
        [
            row.id,
            row.name,
            f"{row.prefix}…",
            key_status(row),
            f"scopes={row.scopes}",
            f"models={models}",
            limits,
            f"expires={expires}",
            row.created_at.isoformat(),
        ]
    )


def cmd_keys(args: argparse.Namespace) -> int:
    from app.db import create_engine, create_sessionmaker
    from app.errors import NotFound
    from app.keys import service

    settings = load_cli_settings()
    configure_logging("WARNING", settings.log_format)
    options = key_options(args) if args.keys_command == "create" else None

    async def run() -> int:
        engine = create_engine(settings, pool=False)
        try:
            async with create_sessionmaker(engine)() as session:
                if args.keys_command == "create":
                    created = await service.create_key(session, args.name, options)
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
                        raise Refusal(f"keys revoke: {exc.message}", ExitCode.NOT_FOUND) from None
                    await session.commit()
                    for row in revoked:
                        print(f"revoked {row.id} ({row.name})")
                else:
                    for row in await service.list_keys(session):
                        print(describe_key(row))
        finally:
            await engine.dispose()
        return ExitCode.OK

    prepare_schema(settings)
    return asyncio.run(run())
