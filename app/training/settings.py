"""Settings of the job worker and the ART/W&B adapter (env: WORKER__*, TRAINING__*)."""

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

# The base models W&B Serverless RL lists (art-serverless.md §6.3).
DEFAULT_ALLOWED_BASE_MODELS = [
    "OpenPipe/Qwen3-14B-Instruct",
    "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "Qwen/Qwen3.6-27B",
    "meta-llama/Llama-3.1-8B-Instruct",
]


class WorkerSettings(BaseModel):
    poll_interval_s: float = Field(
        1.0, gt=0, description="how often an idle worker looks for work and running jobs look for a cancel"
    )
    lease_s: float = Field(60.0, gt=0, description="how long a claim lasts without a heartbeat")
    heartbeat_s: float = Field(
        10.0, gt=0, description="how often a worker renews its claims and its row in the worker registry"
    )
    live_after_s: float = Field(
        30.0, gt=0, description="a worker whose last heartbeat is older than this is not counted as live"
    )
    event_poll_interval_s: float = Field(1.0, gt=0, description="how often remote training events are polled")
    step_watchdog_s: float = Field(
        3600.0, gt=0, description="abandon a step that shows no event for this long"
    )
    remote_timeout_s: float = Field(
        60.0, gt=0, description="timeout of one W&B call (except the training POST)"
    )
    training_post_timeout_s: float = Field(
        600.0, gt=0, description="timeout of the training POST (ART's client waits 600 s)"
    )
    remote_get_retries: int = Field(
        3,
        ge=0,
        le=10,
        description="retries of a failed W&B GET/DELETE inside ART's client (POSTs never retry)",
    )
    max_concurrent_jobs: int = Field(4, ge=1, description="jobs one worker runs at the same time")
    max_concurrent_items: int = Field(
        1, ge=1, description="work items (dataset builds) one worker runs at the same time"
    )
    item_max_attempts: int = Field(
        3, ge=1, description="a work item whose worker died this many times is given up (its dataset fails)"
    )
    submit_resolution_s: float = Field(
        900.0,
        gt=0,
        description="after a POST whose outcome is unknown, how long to look for its checkpoint before failing",
    )
    checkpoint_wait_s: float = Field(
        60.0, gt=0, description="after training_ended, how long to wait for the new checkpoint to be listed"
    )
    late_checkpoint_window_s: float = Field(
        86400.0, ge=0, description="how long checkpoints of cancelled or abandoned steps are looked for"
    )
    late_checkpoint_interval_s: float = Field(
        60.0, gt=0, description="how often a worker looks for checkpoints of cancelled or abandoned steps"
    )
    rate_limit_retries: int = Field(
        5, ge=0, description="retries of a training POST that W&B refused with 429 (never accepted)"
    )
    shutdown_grace_s: float = Field(
        15.0, ge=0, description="on shutdown, how long an in-flight training POST may take to finish"
    )
    wandb_key_check_ttl_s: float = Field(
        300.0, gt=0, description="how long W&B's answer about the key is cached (health, worker registry)"
    )
    metrics_host: str = Field("0.0.0.0", description="interface of `training-control worker`'s /metrics")
    metrics_port: int = Field(
        9464,
        ge=-1,
        le=65535,
        description="port of `training-control worker`'s /metrics (0: any free; -1: off)",
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> "WorkerSettings":
        if self.heartbeat_s >= self.lease_s:
            raise ValueError("heartbeat_s must be shorter than lease_s, or leases expire while jobs run")
        return self


class TrainingSettings(BaseModel):
    allowed_base_models: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOWED_BASE_MODELS))
    default_base_model: str = "OpenPipe/Qwen3-14B-Instruct"
    keep_last_checkpoints: int = Field(2, ge=0, description="checkpoints kept besides latest and best")
    best_metric: str = "reward_mean"
    best_metric_mode: Literal["max", "min"] = "max"
    webhook_urls: list[str] = Field(default_factory=list)
    # Standard Webhooks secret (`whsec_<base64>`, or any string used as raw bytes)
    webhook_secret: SecretStr | None = None
    webhook_max_attempts: int = Field(6, ge=1)
    webhook_backoff_s: float = Field(2.0, gt=0, description="first retry delay; doubles per attempt")
    webhook_timeout_s: float = Field(10.0, gt=0)
    # POST /train without batchId: how many of the newest windows with unused trajectories to train
    train_recent_windows: int = Field(1, ge=1)

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhook URL {url!r} must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _secret_for_webhooks(self) -> "TrainingSettings":
        if self.webhook_urls and self.webhook_secret is None:
            raise ValueError("webhook_urls need webhook_secret (TRAINING__WEBHOOK_SECRET) to sign deliveries")
        return self
