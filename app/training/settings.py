"""Settings of the job worker and the ART/W&B adapter (env: WORKER__*, TRAINING__*)."""

from pydantic import BaseModel, Field

# The base models W&B Serverless RL lists (art-serverless.md §6.3).
DEFAULT_ALLOWED_BASE_MODELS = [
    "OpenPipe/Qwen3-14B-Instruct",
    "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "Qwen/Qwen3.6-27B",
    "meta-llama/Llama-3.1-8B-Instruct",
]


class WorkerSettings(BaseModel):
    poll_interval_s: float = Field(1.0, gt=0, description="how often an idle worker looks for work")
    lease_s: float = Field(60.0, gt=0, description="how long a claim lasts without a heartbeat")
    heartbeat_s: float = Field(10.0, gt=0, description="how often a running job renews its lease")
    event_poll_interval_s: float = Field(1.0, gt=0, description="how often remote training events are polled")
    step_watchdog_s: float = Field(3600.0, gt=0, description="fail a step that shows no event for this long")
    remote_timeout_s: float = Field(60.0, gt=0, description="timeout of one call to the W&B API")


class TrainingSettings(BaseModel):
    allowed_base_models: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOWED_BASE_MODELS))
    default_base_model: str = "OpenPipe/Qwen3-14B-Instruct"
    keep_last_checkpoints: int = Field(2, ge=0, description="checkpoints kept besides latest and best")
    best_metric: str = "reward_mean"
    webhook_urls: list[str] = Field(default_factory=list)
    webhook_secret: str | None = None
