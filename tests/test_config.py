"""Settings: contract names and defaults, validation with one readable line, secrets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, get_args

import pytest
from pydantic import BaseModel, SecretStr

from app.config import ConfigError, Settings, load_settings, normalise_database_url
from tests.fixtures.support import REPO, clean_env

CONTRACT_ENV = {
    "DATABASE_URL": "postgresql://svc@db.internal:5432/training",
    "BABYLON_DATABASE_URL": "postgresql://game@game-db:5432/babylon",
    "WANDB_API_KEY": "wandb-contract-key-0123456789",
    "WANDB_BASE_URL": "http://emulator:8900/v1/",
    "WANDB_ENTITY": "babylon-team",
    "WANDB_PROJECT": "agents",
    "API_KEYS": "key-one, key-two,,",
    "RUN_WORKER": "false",
    "MIGRATE_ON_START": "false",
    "LOG_LEVEL": "debug",
    "LOG_FORMAT": "JSON",
    "ENVIRONMENT": "development",
    "DB__POOL_SIZE": "3",
    "HTTP__MAX_BODY_BYTES": "2048",
    "AUTH__KEY_CACHE_TTL_S": "0",
    "WORKER__LEASE_S": "90",
}


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting in the environment and no `.env` in the working directory."""
    for name in list(os.environ):
        if name not in clean_env():
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


class TestContractNames:
    def test_defaults_are_the_contracts(self, isolated_env: Path) -> None:
        s = load_settings()
        assert s.database_url == "sqlite+aiosqlite:///./data/training.db"
        assert s.babylon_database_url is None
        assert s.wandb_api_key is None
        assert s.wandb_base_url == "https://api.training.wandb.ai/v1"
        assert s.wandb_entity is None
        assert s.wandb_project == "babylon-rl"
        assert s.api_keys == []
        assert s.run_worker is True
        assert s.migrate_on_start is True
        assert (s.log_level, s.log_format) == ("INFO", "console")
        assert s.environment == "production"

    def test_every_contract_variable_is_read(
        self, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name, value in CONTRACT_ENV.items():
            monkeypatch.setenv(name, value)
        s = load_settings()
        assert s.database_url == "postgresql+asyncpg://svc@db.internal:5432/training"
        assert s.babylon_database_url == "postgresql+asyncpg://game@game-db:5432/babylon"
        assert s.wandb_api_key is not None
        assert s.wandb_api_key.get_secret_value() == "wandb-contract-key-0123456789"
        assert s.wandb_base_url == "http://emulator:8900/v1"
        assert (s.wandb_entity, s.wandb_project) == ("babylon-team", "agents")
        assert [k.get_secret_value() for k in s.api_keys] == ["key-one", "key-two"]
        assert (s.run_worker, s.migrate_on_start) == (False, False)
        assert (s.log_level, s.log_format, s.environment) == ("DEBUG", "json", "development")
        assert s.db.pool_size == 3
        assert s.http.max_body_bytes == 2048
        assert s.auth.key_cache_ttl_s == 0
        assert s.worker.lease_s == 90

    def test_dotenv_file_in_the_working_directory_is_read(
        self, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (isolated_env / ".env").write_text(
            "WANDB_PROJECT=from-dotenv\nDB__POOL_SIZE=7\nWANDB_API_KEY=dotenv-wandb-key\n"
        )
        s = load_settings()
        assert s.wandb_project == "from-dotenv"
        assert s.db.pool_size == 7
        assert s.wandb_api_key is not None
        assert s.wandb_api_key.get_secret_value() == "dotenv-wandb-key"
        assert "WANDB_API_KEY" not in os.environ

    def test_environment_wins_over_dotenv(self, isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        (isolated_env / ".env").write_text("WANDB_PROJECT=from-dotenv\n")
        monkeypatch.setenv("WANDB_PROJECT", "from-env")
        assert load_settings().wandb_project == "from-env"


class TestDatabaseUrl:
    @pytest.mark.parametrize(
        ("given", "expected"),
        [
            ("postgresql://u@h:5432/db", "postgresql+asyncpg://u@h:5432/db"),
            ("postgres://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
            ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg://u@h/db"),
            ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
            ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
            ("  sqlite+aiosqlite:////tmp/x.db ", "sqlite+aiosqlite:////tmp/x.db"),
        ],
    )
    def test_operator_urls_are_rewritten_to_async_drivers(self, given: str, expected: str) -> None:
        assert normalise_database_url(given) == expected
        assert load_settings(database_url=given).database_url == expected

    @pytest.mark.parametrize("bad", ["mysql://u@h/db", "not a url", "http://h/db"])
    def test_unsupported_url_is_one_readable_error(self, bad: str) -> None:
        with pytest.raises(ConfigError) as info:
            load_settings(database_url=bad)
        message = str(info.value)
        assert message.startswith("invalid configuration: DATABASE_URL: unsupported database URL scheme")
        assert "\n" not in message

    def test_unknown_log_format_names_the_variable_and_the_value(self) -> None:
        with pytest.raises(ConfigError, match=r"LOG_FORMAT: .*'console' or 'json' \(got 'xml'\)"):
            load_settings(log_format="xml")


class TestSecrets:
    SECRETS: ClassVar[dict[str, str]] = {
        "wandb_api_key": "wandb-SECRET-9f8e7d",
        "api_keys": "client-SECRET-1a2b,client-SECRET-3c4d",
        "database_url": "postgresql://svc:dbpass-SECRET-5e6f@db:5432/training",
        "babylon_database_url": "postgresql://game:gamepass-SECRET-7a8b@game:5432/babylon",
    }
    NEEDLES = ("wandb-SECRET", "client-SECRET", "dbpass-SECRET", "gamepass-SECRET")

    def test_secret_fields_are_secretstr(self) -> None:
        s = load_settings(**self.SECRETS)
        assert isinstance(s.wandb_api_key, SecretStr)
        assert all(isinstance(k, SecretStr) for k in s.api_keys)

    def test_repr_str_and_json_dump_do_not_show_secrets(self) -> None:
        s = load_settings(**self.SECRETS)
        for text in (repr(s), str(s), f"{s}", s.model_dump_json()):
            for needle in self.NEEDLES[:2]:
                assert needle not in text
        for text in (repr(s), str(s)):
            for needle in self.NEEDLES:
                assert needle not in text
        assert "svc:***@db" in repr(s)

    def test_every_secret_looking_setting_is_a_secretstr(self) -> None:
        # Feature groups add settings over time; a new token or password must not be a plain str.
        words = ("secret", "password", "token", "api_key")

        def walk(model: type[BaseModel], prefix: str) -> list[str]:
            wrong = []
            for name, field in model.model_fields.items():
                annotation: Any = field.annotation
                nested = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type)]
                models = [a for a in nested if issubclass(a, BaseModel)]
                for sub in models:
                    wrong += walk(sub, f"{prefix}{name.upper()}__")
                flat = {annotation, *get_args(annotation)}
                flat |= {x for a in get_args(annotation) for x in get_args(a)}
                if any(w in name for w in words) and str in flat:
                    wrong.append(prefix + name.upper())
            return wrong

        assert walk(Settings, "") == []

    def test_wandb_api_key_is_removed_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("WANDB_API_KEY", "wandb-from-env-123")
        s = load_settings()
        assert s.wandb_api_key is not None
        assert s.wandb_api_key.get_secret_value() == "wandb-from-env-123"
        assert "WANDB_API_KEY" not in os.environ

    def test_third_party_load_dotenv_cannot_put_the_key_back(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # `import art` calls load_dotenv() (art-serverless.md §7.3); importing `app` disables it.
        import dotenv

        monkeypatch.delenv("WANDB_API_KEY", raising=False)
        env_file = tmp_path / ".env"
        env_file.write_text("WANDB_API_KEY=dotenv-wandb-key\n")
        assert dotenv.load_dotenv(env_file) is False
        assert "WANDB_API_KEY" not in os.environ


def _env_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        annotation: Any = field.annotation
        groups = [
            a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if groups:
            names += _env_names(groups[0], f"{prefix}{name.upper()}__")
        else:
            names.append(prefix + name.upper())
    return names


def test_readme_documents_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    undocumented = [name for name in _env_names(Settings) if f"| `{name}` |" not in readme]
    assert undocumented == [], "add these to the configuration tables in README.md"
