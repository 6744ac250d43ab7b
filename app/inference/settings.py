"""Settings of the inference gateway (env: INFERENCE__*)."""

from pydantic import BaseModel, Field


class InferenceSettings(BaseModel):
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(600.0, gt=0)
    max_connections: int = Field(512, gt=0)
    capture_buffer_size: int = Field(10_000, gt=0, description="pending captures/log rows before overflow")
    flush_interval_s: float = Field(0.5, gt=0)
    request_log_retention_days: int = Field(30, ge=0, description="0 keeps the request log forever")
    fallback_to_base_model: bool = False
