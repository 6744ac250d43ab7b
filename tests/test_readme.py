"""Every command the README shows is exercised: run here, or named with what runs it.

A command added to the README without an entry below fails `test_every_readme_command_is_exercised`,
so the documentation cannot drift from what is tested.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest

from app.cli import build_parser
from tests.conftest import _pg_reachable

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

QUICK_START_SETUP = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[dev,demo]' && .venv/bin/training-control demo"
)
QUICK_START_TESTS = "bash .ci/run"

# Commands exercised elsewhere, and by what. Everything in the "Running on Postgres" block is
# run for real by test_the_postgres_walkthrough_runs_as_written.
EXERCISED_ELSEWHERE = {
    QUICK_START_SETUP: ".ci/run installs the same way (test_ci_installs_like_the_quick_start); "
    "tests/e2e/test_demo.py runs the demo",
    QUICK_START_TESTS: "CI runs exactly this",
    "cp .env.example .env": "test_compose_walkthrough_commands_name_real_services_and_commands",
    "docker compose up -d --build": "no Docker engine here; tests/test_containers.py checks the compose file",
    'curl -H "Authorization: Bearer $API_KEY" http://localhost:8000/v1/models': "the Postgres walkthrough test "
    "calls /v1/models with the key the same way",
    "docker compose run --rm migrate training-control keys create my-client": "test_compose_walkthrough_commands_"
    "name_real_services_and_commands (service and CLI command exist); keys create is tested in tests/e2e/test_cli.py",
}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands_of(block: str) -> list[str]:
    commands = []
    for raw in block.replace("\\\n", " ").splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line:
            commands.append(line)
    return commands


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def readme_commands() -> list[str]:
    return [c for block in bash_blocks(README.read_text()) for c in commands_of(block)]


def postgres_walkthrough() -> list[str]:
    return [
        c
        for block in bash_blocks(section(README.read_text(), "Running on Postgres"))
        for c in commands_of(block)
    ]


def test_quick_start_has_exactly_the_two_commands() -> None:
    blocks = bash_blocks(section(README.read_text(), "Quick start"))
    assert [commands_of(b) for b in blocks] == [[QUICK_START_SETUP, QUICK_START_TESTS]]


def test_every_readme_command_is_exercised() -> None:
    walkthrough = set(postgres_walkthrough())
    unexercised = [c for c in readme_commands() if c not in EXERCISED_ELSEWHERE and c not in walkthrough]
    assert not unexercised, f"README commands with no test: {unexercised}"


def test_ci_installs_like_the_quick_start() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv .venv" in ci
    installed = re.search(r"pip install (?:-q )?-e '\.\[([a-z,]+)\]'", ci)
    assert installed is not None, "CI installs the project with its extras"
    # `dev` pulls in `demo` (pyproject.toml), so CI has at least what the quick start installs
    extras = set(installed.group(1).split(","))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in list(extras):
        extras |= {
            d.split("[", 1)[1].rstrip("]") for d in pyproject[extra] if d.startswith("training-control[")
        }
    assert extras >= {"dev", "demo"}


def test_the_demo_tools_are_an_extra_not_a_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {re.split(r"[<>=~\[ ]", d, maxsplit=1)[0] for d in project["dependencies"]}
    assert "rich" not in runtime
    assert any(d.startswith("rich") for d in project["optional-dependencies"]["demo"])


def test_compose_walkthrough_commands_name_real_services_and_commands() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert (ROOT / ".env.example").exists()
    run = shlex.split("docker compose run --rm migrate training-control keys create my-client")
    service, argv = run[4], run[5:]
    assert service in compose["services"]
    assert argv[0] == "training-control"
    parsed = build_parser().parse_args(argv[1:])
    assert (parsed.command, parsed.keys_command, parsed.name) == ("keys", "create", "my-client")
    assert "8000" in str(compose["services"]["api"].get("ports"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(
    not (ROOT / ".venv" / "bin" / "training-control").exists(), reason="needs the README's .venv"
)
def test_the_postgres_walkthrough_runs_as_written(tmp_path: Path) -> None:
    if not _pg_reachable():
        if os.environ.get("CI"):
            pytest.fail("Postgres is not reachable")
        pytest.skip("Postgres is not reachable")
    commands = postgres_walkthrough()
    assert commands[0] == "createdb training"
    db = f"readme_{secrets.token_hex(4)}"
    port = _free_port()
    script = ["set -euo pipefail"]
    for command in commands:
        command = command.replace("createdb training", f"createdb {db}").replace(
            ":5432/training", f":5432/{db}"
        )
        if "training-control serve" in command:
            command = command.replace("--host 0.0.0.0", "--host 127.0.0.1").replace(
                "--port 8000", f"--port {port}"
            )
            script += [
                f"{command} > serve.log 2>&1 &",
                "pid=$!",
                f"for _ in $(seq 1 150); do curl -sf http://127.0.0.1:{port}/healthz >/dev/null && break; sleep 0.2; done",
                f'curl -sf -H "Authorization: Bearer $API_KEYS" http://127.0.0.1:{port}/v1/models > models.json',
                f"test $(curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/v1/models) = 401",
                "kill -TERM $pid; wait $pid || true",
            ]
        else:
            script.append(command)
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGUSER": "postgres"}
    env.pop("DATABASE_URL", None)
    try:
        result = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        assert '"object":"list"' in (ROOT / "models.json").read_text().replace(" ", "")
    finally:
        (ROOT / "models.json").unlink(missing_ok=True)
        log = ROOT / "serve.log"
        if log.exists():
            log.rename(tmp_path / "serve.log")
        subprocess.run(["dropdb", "--if-exists", "--force", db], env=env, capture_output=True, check=False)


def test_the_readmes_exit_codes_are_the_clis() -> None:
    from app.cli.exit_codes import MEANINGS, ExitCode

    table = section(README.read_text(), "CLI reference").split("| code | meaning |", 1)[1]
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", table, flags=re.M))
    assert rows == {str(int(code)): MEANINGS[code] for code in ExitCode}


def test_the_cli_session_shown_in_the_readme_is_made_of_real_commands() -> None:
    text = section(README.read_text(), "Operating from the command line")
    shown = re.findall(r"^\$ training-control (.+)$", text, flags=re.M)
    assert {" ".join(c.split()[:2]) for c in shown} >= {"jobs list", "jobs follow", "aliases set"}
    parser = build_parser()
    for command in shown:
        parser.parse_args(shlex.split(command))  # exits (fails the test) on a usage error
    documented = set(re.findall(r"^\| `(\w+ \w+)", text, flags=re.M))
    assert documented >= {
        "jobs list",
        "jobs show",
        "jobs cancel",
        "jobs follow",
        "models list",
        "aliases set",
    }
