"""What `training-control` exits with: one number per kind of outcome, so scripts can tell a
failed job from an unreachable service. Shown by `--help` and in the README."""

from __future__ import annotations

import textwrap
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # invalid configuration, unreachable database, failed migration or start-up
    USAGE = 2  # a bad command line, or `serve` with no API key configured
    PORT_IN_USE = 3  # `serve` / `emulator` cannot listen on the host and port
    SCHEMA = 4  # the database schema is not at head (MIGRATE_ON_START=false), or the game's is missing
    UNREACHABLE = 5  # the service at --base-url / TRAINING_CONTROL_URL did not answer
    UNAUTHORIZED = 6  # the service refused the API key (401)
    NOT_FOUND = 7  # no such job, dataset, model or checkpoint (404)
    API_ERROR = 8  # the service refused the request otherwise (4xx/5xx; the message says why)
    JOB_FAILED = 10  # `jobs follow`: the job ended `failed`
    JOB_CANCELLED = 11  # `jobs follow`: the job ended `cancelled`
    INTERRUPTED = 130  # Ctrl-C


MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success (`jobs follow`: the job succeeded)",
    ExitCode.FAILURE: "invalid configuration, unreachable database, failed migration or start-up",
    ExitCode.USAGE: "bad command line, or `serve` with no API key configured",
    ExitCode.PORT_IN_USE: "cannot listen on the host and port (checked before anything else)",
    ExitCode.SCHEMA: "database schema not at head with MIGRATE_ON_START=false (run `training-control "
    "migrate`); `demo --babylon-db`: the game's schema is missing",
    ExitCode.UNREACHABLE: "the service at --base-url did not answer",
    ExitCode.UNAUTHORIZED: "the service refused the API key (401)",
    ExitCode.NOT_FOUND: "no such job, dataset, model or checkpoint (404)",
    ExitCode.API_ERROR: "the service refused the request (another 4xx/5xx)",
    ExitCode.JOB_FAILED: "`jobs follow`: the job failed",
    ExitCode.JOB_CANCELLED: "`jobs follow`: the job was cancelled",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_codes_help(*codes: ExitCode) -> str:
    """The exit-code table for a `--help` epilog (all codes when none are named)."""
    chosen = sorted(set(codes or tuple(ExitCode)))
    lines = ["exit codes:"]
    for code in chosen:
        lines += textwrap.wrap(
            MEANINGS[code], width=94, initial_indent=f"  {int(code):>3}  ", subsequent_indent=" " * 7
        )
    return "\n".join(lines)
