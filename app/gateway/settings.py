"""Settings of the inference gateway (env: INFERENCE__*)."""

from pydantic import BaseModel, Field


class InferenceSettings(BaseModel):
    connect_timeout_s: float = Field(5.0, gt=0, description="time to open a TCP/TLS connection upstream")
    read_timeout_s: float = Field(
        600.0, gt=0, description="longest wait for the upstream's headers or its next body bytes"
    )
    max_connections: int = Field(512, gt=0, description="open upstream connections per process")
    pool_timeout_s: float = Field(30.0, gt=0, description="longest wait for a free upstream connection")
    keepalive_expiry_s: float = Field(
        4.0, gt=0, description="idle upstream connections are closed after this (below common server limits)"
    )
    max_response_bytes: int = Field(
        32 * 1024 * 1024,
        gt=0,
        description="largest upstream answer accepted (decoded; a stream counts all its bytes): above it "
        "the caller gets 502 upstream_response_too_large",
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="longest upstream header line accepted (502 above it)"
    )
    resolve_cache_ttl_s: float = Field(
        1.0,
        ge=0,
        description="how long a model-name resolution is reused; alias moves made in another process "
        "take effect within this time (0 resolves every request)",
    )
    capture_token_ids: bool = Field(
        True,
        description="ask upstream for `return_tokens_as_token_ids` on captured requests whose caller did "
        "not ask for logprobs, so stored tokens are exact ids (`token_id:<n>`)",
    )
    capture_buffer_size: int = Field(10_000, gt=0, description="pending captures/log rows before overflow")
    flush_interval_s: float = Field(0.5, gt=0)
    flush_batch_size: int = Field(
        200,
        gt=0,
        description="rows per INSERT of the background writer (small batches keep each pause short)",
    )
    spool_dir: str = Field(
        "./data/gateway-spool",
        description="write-ahead spool of capture and request-log rows: each is appended to a file here "
        "before its answer completes, so a kill -9 loses none; replicas on one host may share it "
        "(empty disables: rows wait in memory only)",
    )
    spool_rotate_rows: int = Field(10_000, gt=0, description="rows per spool file before a new one starts")
    spool_rotate_s: float = Field(
        10.0,
        gt=0,
        description="a new spool file starts after this; also how often dead processes' files are adopted",
    )
    request_log: bool = Field(True, description="write one compact row per gateway request")
    request_log_retention_days: int = Field(30, ge=0, description="0 keeps the request log forever")
    retention_interval_s: float = Field(
        3600.0, gt=0, description="how often old request-log rows are deleted"
    )
    retention_batch_size: int = Field(5000, gt=0, description="rows per DELETE of the retention sweep")
    fallback_to_base_model: bool = Field(
        False,
        description="serve a model's base model when the requested checkpoint is gone upstream "
        "(each served model can also opt in with fallback_to_base)",
    )
