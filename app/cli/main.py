"""`training-control` (also `python -m app`): the parser and the one place errors become lines.

Service:  serve | worker | migrate | keys            (app/cli/service.py)
Operator: jobs | datasets | models | aliases         (app/cli/operator.py, over the HTTP API)
Dev:      emulator | demo                            (app/cli/dev.py, modules in app_dev/)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.cli import dev, operator, service
from app.cli.exit_codes import ExitCode, exit_codes_help
from app.cli.options import HelpFormatter, option, subcommand

E = ExitCode

SERVICE_SETTINGS = (
    "settings (environment or .env; README, Configuration): DATABASE_URL, MIGRATE_ON_START, API_KEYS,\n"
    "  ENVIRONMENT, RUN_WORKER, WANDB_API_KEY, WANDB_BASE_URL, WANDB_ENTITY, WANDB_PROJECT, LOG_LEVEL,\n"
    "  LOG_FORMAT, and the DB__*, HTTP__*, AUTH__*, WORKER__*, TRAINING__*, INFERENCE__*, BABYLON__* groups"
)
DATABASE_SETTINGS = (
    "settings (environment or .env): DATABASE_URL, MIGRATE_ON_START, DB__MIGRATE_LOCK_TIMEOUT_S, LOG_LEVEL"
)
API_ERRORS = (E.OK, E.USAGE, E.UNREACHABLE, E.UNAUTHORIZED, E.NOT_FOUND, E.API_ERROR, E.INTERRUPTED)

EPILOG = f"""\
The service:  serve, worker, migrate, keys (they read DATABASE_URL and the other settings).
Operators:    jobs, datasets, models, aliases talk to a running service over its API
              (--base-url / {operator.URL_ENV}, --api-key / {operator.KEY_ENV}).
Development:  emulator, demo.

{exit_codes_help()}
"""


def _add_api_options(parser: argparse.ArgumentParser, *, json_help: str = "print the API's JSON") -> None:
    group = parser.add_argument_group("service")
    option(
        group,
        "--base-url",
        metavar="URL",
        default=operator.DEFAULT_URL,
        env=operator.URL_ENV,
        help="the service's URL (…/v1 accepted)",
    )
    option(
        group,
        "--api-key",
        metavar="KEY",
        default=None,
        env=operator.KEY_ENV,
        secret=True,
        help="a Bearer key of the service (API_KEYS or `keys create`)",
    )
    option(group, "--timeout", type=float, default=30.0, metavar="S", help="seconds per request")
    parser.add_argument("--json", action="store_true", help=json_help)


def _add_page_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=20, help="how many, newest first (1-100)")
    parser.add_argument("--after", metavar="ID", default=None, help="the page after this id")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="training-control",
        description="Babylon agent training service: trajectories → scores → datasets → W&B Serverless RL "
        "→ gateway.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # -- the service ---------------------------------------------------------------------------
    serve = subcommand(
        sub,
        "serve",
        help="run the API (and its worker unless RUN_WORKER=false)",
        description="Run the API. In order: check the port, migrate (or, with MIGRATE_ON_START=false, "
        "refuse a schema that is not at head), check that an API key exists, then start the app and "
        "its worker. Stops gracefully on SIGTERM.",
        exit_codes=(E.OK, E.FAILURE, E.USAGE, E.PORT_IN_USE, E.SCHEMA),
        settings=SERVICE_SETTINGS,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.set_defaults(func=service.cmd_serve)

    worker = subcommand(
        sub,
        "worker",
        help="run a standalone job worker (no HTTP)",
        description="Run a job worker without HTTP; any number may share one Postgres. Migrates first "
        "(or refuses a schema that is not at head); stops gracefully on SIGTERM/SIGINT.",
        exit_codes=(E.OK, E.FAILURE, E.SCHEMA),
        settings=SERVICE_SETTINGS,
    )
    worker.set_defaults(func=service.cmd_worker)

    migrate = subcommand(
        sub,
        "migrate",
        help="upgrade the database schema; safe from several processes at once",
        exit_codes=(E.OK, E.FAILURE),
        settings=DATABASE_SETTINGS,
    )
    migrate.add_argument("revision", nargs="?", default="head", help="the revision to upgrade to")
    migrate.set_defaults(func=service.cmd_migrate)

    keys = subcommand(
        sub, "keys", help="manage client API keys", exit_codes=(E.OK, E.FAILURE, E.SCHEMA, E.NOT_FOUND)
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = subcommand(
        keys_sub,
        "create",
        help="create a key and print it once (only its hash is stored)",
        exit_codes=(E.OK, E.FAILURE, E.SCHEMA),
        settings=DATABASE_SETTINGS,
    )
    create.add_argument("name")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        choices=["inference", "training", "admin"],
        help="what the key may do; repeat for several (inference: chat and models; training: /train, "
        "files, datasets, trajectories, scores, jobs; admin: keys, aliases, deletes, metrics, all usage) "
        "[default: all three]",
    )
    create.add_argument(
        "--models",
        dest="models",
        action="append",
        metavar="PATTERN",
        help="glob of the models the key may call, e.g. 'babylon-agent:*'; repeat or comma-separate "
        "[default: every model]",
    )
    create.add_argument("--rpm", type=int, help="requests per minute on chat completions [default: no limit]")
    create.add_argument("--tpm", type=int, help="tokens per minute on chat completions [default: no limit]")
    create.add_argument(
        "--expires-in",
        metavar="DURATION",
        help="lifetime such as 30d, 12h, 45m or 90s; the key stops working then [default: never]",
    )
    revoke = subcommand(
        keys_sub,
        "revoke",
        help="revoke a key by id, or all active keys with a name",
        exit_codes=(E.OK, E.FAILURE, E.SCHEMA, E.NOT_FOUND),
        settings=DATABASE_SETTINGS,
    )
    revoke.add_argument("key", metavar="ID_OR_NAME")
    subcommand(
        keys_sub,
        "list",
        help="list keys: scopes, models, limits, expiry and state (never their values)",
        exit_codes=(E.OK, E.FAILURE, E.SCHEMA),
        settings=DATABASE_SETTINGS,
    )
    keys.set_defaults(func=service.cmd_keys)

    # -- operators, over the API --------------------------------------------------------------
    jobs = subcommand(
        sub, "jobs", help="list, show, cancel and follow fine-tuning jobs", exit_codes=API_ERRORS
    )
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    jobs_list = subcommand(jobs_sub, "list", help="list jobs, newest first", exit_codes=API_ERRORS)
    _add_page_options(jobs_list)
    _add_api_options(jobs_list)
    jobs_list.set_defaults(func=operator.cmd_jobs_list)
    jobs_show = subcommand(
        jobs_sub, "show", help="a job, its steps and its checkpoints", exit_codes=API_ERRORS
    )
    jobs_show.add_argument("job_id", metavar="JOB_ID")
    _add_api_options(jobs_show)
    jobs_show.set_defaults(func=operator.cmd_jobs_show)
    jobs_cancel = subcommand(
        jobs_sub,
        "cancel",
        help="cancel a job (a running one stops at its next safe point)",
        exit_codes=API_ERRORS,
    )
    jobs_cancel.add_argument("job_id", metavar="JOB_ID")
    _add_api_options(jobs_cancel)
    jobs_cancel.set_defaults(func=operator.cmd_jobs_cancel)
    jobs_follow = subcommand(
        jobs_sub,
        "follow",
        help="follow a job until it ends: a progress bar per step, the losses, the outcome",
        description="Follow a job until it ends: its state changes, a progress bar per training step "
        "filled by the gradient steps with their loss, each checkpoint, and the outcome. The exit code "
        "is the outcome: 0 succeeded, 10 failed, 11 cancelled. Ctrl-C stops following, not the job.",
        exit_codes=(*API_ERRORS, E.JOB_FAILED, E.JOB_CANCELLED),
    )
    jobs_follow.add_argument("job_id", metavar="JOB_ID")
    jobs_follow.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between polls")
    _add_api_options(jobs_follow, json_help="print each event, then the final job, as JSON lines")
    jobs_follow.set_defaults(func=operator.cmd_jobs_follow)

    datasets = subcommand(sub, "datasets", help="list and show datasets", exit_codes=API_ERRORS)
    datasets_sub = datasets.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    datasets_list = subcommand(
        datasets_sub, "list", help="list datasets, newest first", exit_codes=API_ERRORS
    )
    _add_page_options(datasets_list)
    _add_api_options(datasets_list)
    datasets_list.set_defaults(func=operator.cmd_datasets_list)
    datasets_show = subcommand(
        datasets_sub,
        "show",
        help="a dataset: groups, trainable turns, rewards, rejections",
        exit_codes=API_ERRORS,
    )
    datasets_show.add_argument("dataset_id", metavar="DATASET_ID")
    _add_api_options(datasets_show)
    datasets_show.set_defaults(func=operator.cmd_datasets_show)

    models = subcommand(sub, "models", help="list the models the gateway serves", exit_codes=API_ERRORS)
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    models_list = subcommand(
        models_sub, "list", help="base models, model lines, aliases and checkpoints", exit_codes=API_ERRORS
    )
    _add_api_options(models_list)
    models_list.set_defaults(func=operator.cmd_models_list)

    aliases = subcommand(sub, "aliases", help="point model aliases at checkpoints", exit_codes=API_ERRORS)
    aliases_sub = aliases.add_subparsers(dest="aliases_command", required=True, metavar="ACTION")
    aliases_set = subcommand(
        aliases_sub,
        "set",
        help="point MODEL:ALIAS at a checkpoint (served within INFERENCE__RESOLVE_CACHE_TTL_S)",
        exit_codes=API_ERRORS,
    )
    aliases_set.add_argument("model", metavar="MODEL", help="a model line: <name> or wandb-artifact:///…")
    aliases_set.add_argument("alias", metavar="ALIAS", help="e.g. production")
    aliases_set.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="a step number, step<N>, a checkpoint id or its artifact name",
    )
    _add_api_options(aliases_set)
    aliases_set.set_defaults(func=operator.cmd_aliases_set)

    # -- development ---------------------------------------------------------------------------
    emulator = subcommand(
        sub,
        "emulator",
        help="run the W&B Training API emulator (development and tests only)",
        exit_codes=(E.OK, E.USAGE, E.PORT_IN_USE),
    )
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulator.add_argument("--port", type=int, default=8900, help="0 picks a free port (the URL is printed)")
    emulator.add_argument(
        "--pace-s", type=float, default=0.0, help="seconds between a training job's events (0 = all at once)"
    )
    emulator.add_argument("--gradient-steps", type=int, default=2, help="gradient_step events per job")
    emulator.add_argument(
        "--api-key", default=None, help="accept only this Bearer key (none: any non-empty key)"
    )
    emulator.add_argument("--entity", default="emulator-entity", help="entity for models created without one")
    emulator.add_argument("--stream-chunks", type=int, default=4, help="content pieces per streamed answer")
    emulator.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    emulator.set_defaults(func=dev.cmd_emulator)

    demo = subcommand(
        sub,
        "demo",
        help="run the whole loop on SQLite and the emulator, no keys needed",
        exit_codes=(E.OK, E.FAILURE, E.SCHEMA, E.INTERRUPTED),
    )
    demo.add_argument("--json", action="store_true", help="print a machine-readable summary instead")
    demo.add_argument("--workdir", default="./data/demo", help="where the demo keeps its database and logs")
    demo.add_argument(
        "--windows", type=int, default=3, choices=range(1, 25), metavar="1-24", help="hourly windows"
    )
    demo.add_argument(
        "--agents", type=int, default=5, choices=range(3, 6), metavar="3-5", help="agents per window"
    )
    demo.add_argument("--seed", type=int, default=7, help="seed of the simulated game")
    demo.add_argument("--pace-s", type=float, default=0.2, help="emulated seconds per training event")
    demo.add_argument(
        "--babylon-db",
        metavar="URL",
        help="write the game into this Postgres (it must have the game's schema) and read it back",
    )
    demo.add_argument("--keep-running", action="store_true", help="keep the service up after the demo")
    demo.add_argument(
        "--rollout",
        action="store_true",
        help="then roll a better and a worse checkpoint out on production, decided by the game's rewards",
    )
    demo.set_defaults(func=dev.cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from alembic.util import CommandError
    from sqlalchemy.exc import DBAPIError, OperationalError

    from app.migrations import MigrationLockTimeout

    try:
        code: int = args.func(args)
    except service.Refusal as exc:
        print(f"training-control: {exc}", file=sys.stderr)
        return int(exc.code)
    except (OperationalError, DBAPIError, OSError) as exc:
        # One readable line for an unreachable database, not a driver traceback.
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"training-control: database error: {reason}", file=sys.stderr)
        return int(ExitCode.FAILURE)
    except (CommandError, MigrationLockTimeout) as exc:
        print(f"training-control: migration failed: {exc}", file=sys.stderr)
        return int(ExitCode.FAILURE)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
