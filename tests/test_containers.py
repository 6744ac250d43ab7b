"""Docker is not available on the development machines, so the container files are checked
by reading them: the compose services, healthchecks, dependencies and commands, and the
Dockerfile's base, user, layer order and command."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml

from app.cli import build_parser
from tests.fixtures.support import REPO

CONTRACT_SETTINGS = [
    "DATABASE_URL",
    "BABYLON_DATABASE_URL",
    "WANDB_API_KEY",
    "WANDB_BASE_URL",
    "WANDB_ENTITY",
    "WANDB_PROJECT",
    "API_KEYS",
    "RUN_WORKER",
    "MIGRATE_ON_START",
    "LOG_LEVEL",
    "LOG_FORMAT",
]
API_COMMAND = ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = compose["services"]
    return result


class TestCompose:
    def test_services(self, services: dict[str, Any]) -> None:
        assert set(services) == {"db", "migrate", "api", "worker"}

    def test_postgres_has_a_pg_isready_healthcheck(self, services: dict[str, Any]) -> None:
        db = services["db"]
        assert db["image"].startswith("postgres:")
        test = " ".join(db["healthcheck"]["test"])
        assert "pg_isready" in test
        assert "pgdata:/var/lib/postgresql/data" in db["volumes"]

    def test_migrate_is_one_shot_after_postgres_is_healthy(self, services: dict[str, Any]) -> None:
        migrate = services["migrate"]
        assert migrate["command"] == ["training-control", "migrate"]
        assert migrate["restart"] == "no"
        assert migrate["depends_on"] == {"db": {"condition": "service_healthy"}}

    @pytest.mark.parametrize("name", ["api", "worker"])
    def test_api_and_worker_start_after_migrate_succeeded(self, services: dict[str, Any], name: str) -> None:
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert depends["db"] == {"condition": "service_healthy"}
        # They never migrate themselves: the one-shot service did.
        assert services[name]["environment"]["MIGRATE_ON_START"] == "false"

    def test_api_runs_the_dockerfile_command_without_the_in_process_worker(
        self, services: dict[str, Any]
    ) -> None:
        api = services["api"]
        assert api["command"] == API_COMMAND
        assert api["environment"]["RUN_WORKER"] == "false"
        assert "/healthz" in " ".join(api["healthcheck"]["test"])
        assert any(str(p).endswith(":8000") for p in api["ports"])

    def test_the_gateway_spool_is_a_volume_of_the_api(
        self, compose: dict[str, Any], services: dict[str, Any]
    ) -> None:
        # the default INFERENCE__SPOOL_DIR under WORKDIR /srv: rows spooled by a killed
        # container are replayed by the next one, even if the container is recreated
        assert "gateway-spool:/srv/data/gateway-spool" in services["api"]["volumes"]
        assert "gateway-spool" in compose["volumes"]

    def test_worker_runs_the_standalone_worker(self, services: dict[str, Any]) -> None:
        assert services["worker"]["command"] == ["training-control", "worker"]

    @pytest.mark.parametrize("name", ["migrate", "worker"])
    def test_commands_are_real_cli_commands(self, services: dict[str, Any], name: str) -> None:
        command = services[name]["command"]
        assert command[0] == "training-control"
        args = build_parser().parse_args(command[1:])
        assert args.command == command[1]

    def test_app_services_share_one_image_and_the_database_url(self, services: dict[str, Any]) -> None:
        for name in ("migrate", "api", "worker"):
            service = services[name]
            assert service["build"] == "."
            assert service["image"] == services["api"]["image"]
            assert service["env_file"] == ".env"
            url = service["environment"]["DATABASE_URL"]
            assert url.startswith("postgresql://")
            assert "@db:5432/" in url

    def test_no_secret_is_written_inline(self, services: dict[str, Any]) -> None:
        secret_names = ("PASSWORD", "API_KEY", "API_KEYS", "SECRET", "TOKEN")
        for name, service in services.items():
            for key, value in (service.get("environment") or {}).items():
                if any(s in key for s in secret_names):
                    assert re.fullmatch(r"\$\{[A-Z_]+(:[?-][^}]*)?\}", str(value)), f"{name}.{key}"
            url = (service.get("environment") or {}).get("DATABASE_URL", "")
            if url:
                match = re.match(r"[a-z+]+://(\$\{[^}]*\}|[^:@]*):(\$\{[^}]*\}|[^@]*)@", url)
                assert match, url
                assert match.group(2).startswith("${"), f"{name}: DATABASE_URL has an inline password"
            # The W&B and client keys come from .env (env_file) only.
            assert not {"WANDB_API_KEY", "API_KEYS"} & set(service.get("environment") or {}), name

    def test_every_interpolated_variable_is_in_env_example(self, compose: dict[str, Any]) -> None:
        def strings(node: Any) -> list[str]:
            if isinstance(node, dict):
                return [s for v in node.values() for s in strings(v)]
            if isinstance(node, list):
                return [s for v in node for s in strings(v)]
            return [node] if isinstance(node, str) else []

        example = (REPO / ".env.example").read_text()
        variables = {v for text in strings(compose) for v in re.findall(r"(?<!\$)\$\{([A-Z_]+)", text)}
        assert "POSTGRES_PASSWORD" in variables
        for variable in variables:
            assert re.search(rf"^#? ?{variable}=", example, re.M), variable


def test_env_example_names_every_contract_setting() -> None:
    example = (REPO / ".env.example").read_text()
    for name in CONTRACT_SETTINGS:
        assert re.search(rf"^#? ?{name}=", example, re.M), name
    for line in example.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert not value or key == "POSTGRES_PASSWORD", f"{key} has a value in .env.example"


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            steps.append((instruction.upper(), rest.strip()))
    return steps


class TestDockerfile:
    def test_slim_python_base(self) -> None:
        assert _dockerfile()[0] == ("FROM", "python:3.11-slim")

    def test_runs_as_a_non_root_user(self) -> None:
        users = [args for instruction, args in _dockerfile() if instruction == "USER"]
        assert users
        assert users[-1] not in {"root", "0", "0:0"}

    def test_dependencies_are_installed_in_a_layer_before_the_code(self) -> None:
        steps = _dockerfile()
        copies = [i for i, (ins, _args) in enumerate(steps) if ins == "COPY"]
        assert steps[copies[0]] == ("COPY", "pyproject.toml ./")
        between = steps[copies[0] + 1 : copies[1]]
        assert any(ins == "RUN" and "pip install" in args for ins, args in between), (
            "dependencies must be installed after copying pyproject.toml and before any other file"
        )
        assert any(ins == "COPY" and re.match(r"app\b", args) for ins, args in steps[copies[1] :])

    def test_copied_paths_exist_and_are_not_dockerignored(self) -> None:
        ignored = (REPO / ".dockerignore").read_text().split()
        for ins, args in _dockerfile():
            if ins != "COPY":
                continue
            *sources, _dest = shlex.split(args)
            for source in sources:
                assert (REPO / source).exists(), source
                assert source.rstrip("/") not in {i.rstrip("/") for i in ignored}, source

    def test_the_production_image_leaves_the_development_tools_out(self) -> None:
        copied = [source for ins, args in _dockerfile() if ins == "COPY" for source in shlex.split(args)[:-1]]
        assert "app" in copied
        assert not [s for s in copied if s.rstrip("/") in {".", "app_dev", "tests", "bench"}], copied

    def test_dockerignore_keeps_secrets_and_local_state_out(self) -> None:
        ignored = set((REPO / ".dockerignore").read_text().split())
        assert {".env", ".venv", ".git", "data/"} <= ignored

    def test_default_command_is_uvicorn_on_all_interfaces(self) -> None:
        cmd = [args for ins, args in _dockerfile() if ins == "CMD"]
        assert len(cmd) == 1
        assert yaml.safe_load(cmd[0]) == API_COMMAND  # exec form: signals reach uvicorn
