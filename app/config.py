"""Service settings, read once from the environment (and `.env`), validated at start.

Names are the contract's (`shared/design/contract.md`); nested groups use `GROUP__FIELD`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.gateway.settings import InferenceSettings
from app.outbound import OutboundSettings
from app.rollouts.settings import RolloutSettings
from app.training.settings import TrainingSettings, WorkerSettings

# Variables that must not stay in the process environment once read (art-serverless.md §7.2).
SECRET_ENV_VARS = ("WANDB_API_KEY",)


class DatabaseSettings(BaseModel):
    pool_size: int = Field(10, gt=0, description="Postgres connections kept open per process")
    max_overflow: int = Field(10, ge=0, description="extra Postgres connections allowed under load")
    pool_timeout_s: float = Field(30.0, gt=0, description="longest wait for a free connection")
    sqlite_busy_timeout_ms: int = Field(
        30_000, ge=0, description="how long a SQLite writer waits for the write lock before failing"
    )
    migrate_lock_timeout_s: float = Field(300.0, gt=0, description="max wait for another process's migration")
    start_wait_s: float = Field(
        120.0,
        ge=0,
        description="how long `serve` and `worker` wait at start for an unreachable database before exiting",
    )


# The scope names of app/keys/scopes.py (config sits below app/keys and cannot import it).
ScopeName = Literal["admin", "inference", "training"]
SCOPE_NAMES: tuple[ScopeName, ...] = ("admin", "inference", "training")


class AuthSettings(BaseModel):
    key_cache_ttl_s: float = Field(
        5.0, ge=0, description="how long a stored key's check is cached; a revoked key works this long"
    )
    dashboard_session_ttl_s: float = Field(
        12 * 3600.0,
        gt=0,
        description="how long a dashboard login lasts (its key's revocation ends it sooner)",
    )
    api_keys_scopes: Annotated[list[ScopeName], NoDecode] = Field(
        default_factory=lambda: list(SCOPE_NAMES),
        min_length=1,
        description="scopes of every key in API_KEYS, comma-separated (inference, training, admin); "
        "the default is full access",
    )
    rate_lease_fraction: float = Field(
        0.1,
        gt=0,
        le=1,
        description="share of a key's per-minute limit one replica leases from the database at a time; "
        "smaller holds the limit closer across replicas, larger makes fewer database round trips",
    )

    @field_validator("api_keys_scopes", mode="before")
    @classmethod
    def _split_scopes(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value


class HttpSettings(BaseModel):
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, description="request body limit of ordinary routes")
    max_upload_bytes: int = Field(512 * 1024 * 1024, gt=0, description="request body limit of /v1/files")
    access_log: bool = Field(False, description="log one line per request (method, path, status, duration)")


class BabylonSettings(BaseModel):
    """The Babylon game adapter's settings (env BABYLON__*). Described here with every other
    setting so that one place reads and validates the environment; only app/babylon reads them."""

    watch_batches: bool = Field(False, description="pick up training_batches rows with status='pending'")
    watch_interval_s: float = Field(300.0, gt=0)
    write_scores: bool = Field(False, description='write scores back to trajectories."aiJudgeReward"')
    model_name: str = Field("babylon-agent", description="the long-lived W&B model name for game training")


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    environment: Literal["production", "development", "test"] = "production"
    database_url: str = "sqlite+aiosqlite:///./data/training.db"
    babylon_database_url: str | None = None
    wandb_api_key: SecretStr | None = None
    wandb_base_url: str = "https://api.training.wandb.ai/v1"
    wandb_entity: str | None = None
    wandb_project: str = "babylon-rl"
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    run_worker: bool = True
    migrate_on_start: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["console", "json"] = "console"

    db: DatabaseSettings = DatabaseSettings()
    http: HttpSettings = HttpSettings()
    auth: AuthSettings = AuthSettings()
    worker: WorkerSettings = WorkerSettings()
    training: TrainingSettings = TrainingSettings()
    inference: InferenceSettings = InferenceSettings()
    outbound: OutboundSettings = OutboundSettings()
    babylon: BabylonSettings = BabylonSettings()
    rollouts: RolloutSettings = RolloutSettings()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("database_url", "babylon_database_url")
    @classmethod
    def _normalise_db_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        return normalise_database_url(value)

    @field_validator("wandb_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _database_url_required(self) -> Settings:
        if not self.database_url:
            raise ValueError("DATABASE_URL must not be empty")
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr()/str() end up in logs and tracebacks: hide passwords inside database URLs
        # (SecretStr fields already render as '**********').
        for name, value in super().__repr_args__():
            if name in ("database_url", "babylon_database_url") and isinstance(value, str):
                value = redact_url(value)
            yield name, value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def wandb_configured(self) -> bool:
        return self.wandb_api_key is not None and bool(self.wandb_api_key.get_secret_value())


def normalise_database_url(url: str) -> str:
    """Accept the URL forms operators paste and return the async-driver form, or raise ValueError."""
    url = url.strip()
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    scheme = url.split("://", 1)[0] if "://" in url else url[:20]
    raise ValueError(
        f"unsupported database URL scheme {scheme!r}; use sqlite+aiosqlite:///path or postgresql://user@host/db"
    )


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs and repr."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


NO_API_KEY_MESSAGE = (
    "no API key configured: set API_KEYS, create one with `training-control keys create NAME`, "
    "or set ENVIRONMENT=development"
)


class ConfigError(Exception):
    """Settings could not be read; the message is one readable line per problem."""


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        loc = "__".join(str(part) for part in err["loc"]).upper() or "settings"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "literal_error":
            # Choices are never secrets, so echoing the rejected value helps.
            msg += f" (got {err['input']!r})"
        problems.append(f"{loc}: {msg}")
    return "invalid configuration: " + "; ".join(problems)


def load_settings(**overrides: object) -> Settings:
    """Read settings and remove secrets from the process environment; raise ConfigError if invalid."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    scrub_secret_env()
    return settings


def scrub_secret_env() -> None:
    # The W&B key makes openpipe-art and wandb contact W&B hosts and block the event loop
    # (art-serverless.md §7.2); once read into Settings it has no business in os.environ.
    for name in SECRET_ENV_VARS:
        os.environ.pop(name, None)


@lru_cache
def get_settings() -> Settings:
    """Settings of this process (the CLI's entry point); an app keeps its own in its AppState."""
    return load_settings()
