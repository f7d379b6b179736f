"""Every PUSHBASE_* setting in one typed object, read from the environment."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PUSHBASE_", extra="ignore")

    data_dir: Path = Field(Path("./pushbase-data"), description="embedded store and payload spool")
    database_url: str | None = Field(None, description="postgresql://... for the PostgreSQL store")
    database_schema: str = Field("pushbase", description="PostgreSQL schema for every table")
    pool_size: int = Field(10, ge=2, description="PostgreSQL connections per process")
    host: str = "127.0.0.1"
    port: int = 8000
    admin_key: str | None = Field(
        None, description="an admin key accepted in addition to stored keys"
    )
    public_url: str | None = Field(None, description="base URL shown in instructions")

    workers: int = Field(2, ge=0, description="job worker threads in this process")
    decode_processes: int = Field(
        1, ge=0, description="processes that decode payloads (0: in the worker threads)"
    )
    max_body_bytes: int = 50 * MIB
    max_inflated_bytes: int = 512 * MIB
    max_sync_rows: int = 1000
    queue_max_bytes: int = 1024 * MIB
    optimal_batch_bytes: int = 1 * MIB
    max_wait_seconds: float = 60.0
    intake_per_dataset: int = Field(
        2, ge=1, description="pushes to one dataset received at once; more wait their turn"
    )
    group_max_bytes: int = Field(
        32 * MIB, description="payload bytes of consecutive jobs written in one transaction"
    )
    job_retention_seconds: int = 7 * 24 * 3600
    idempotency_window_seconds: int = 24 * 3600
    max_row_errors: int = 100
    duckdb_memory_mb: int = Field(
        256,
        ge=64,
        description="embedded store: DuckDB's memory limit (dataset tables have no index:"
        " it does not grow with the data)",
    )
    duckdb_memory_max_mb: int | None = Field(
        None,
        ge=64,
        description="embedded store: the most DuckDB's limit may rise to; writes wait"
        " beyond it (default: half the machine's memory)",
    )
    duckdb_threads: int = Field(
        default_factory=lambda: max(1, (os.cpu_count() or 1) - 1),
        ge=1,
        description="embedded store: DuckDB's threads (default: all cores but one)",
    )
    duckdb_checkpoint_mb: int = Field(
        256, ge=1, description="embedded store: write-ahead log size that triggers a checkpoint"
    )
    duckdb_idle_checkpoint_mb: int = Field(
        32, ge=0, description="embedded store: log size checkpointed when no job runs (0: never)"
    )

    # -- what one request or key may cost (hardening) --------------------------------
    max_row_errors_text: int = Field(
        200, ge=16, description="characters of a row error's value, column name and message kept"
    )
    max_job_document_bytes: int = Field(
        256 * 1024,
        ge=16 * 1024,
        description="a job document's JSON size at most; row errors past it are counted, not kept",
    )
    max_new_columns_per_push: int = Field(
        100,
        ge=0,
        description="columns one push may add to an `evolve` dataset; the rest are row errors",
    )
    max_decode_memory_mb: int = Field(
        2048,
        ge=64,
        description="memory a decoding process may use; a payload needing more fails its job",
    )
    http_header_timeout_seconds: float = Field(
        10.0, gt=0, description="time a client has to send a request's headers"
    )
    http_body_timeout_seconds: float = Field(
        120.0, gt=0, description="time a client has to send a request's whole body (408 after)"
    )
    http_keepalive_seconds: float = Field(
        5.0, gt=0, description="idle time before a keep-alive connection is closed"
    )
    http_max_connections: int = Field(
        1000, ge=1, description="open connections served at once; more are answered 503"
    )
    public_metrics: bool = Field(
        False, description="serve /metrics without a key (else a read key is needed)"
    )

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def duckdb_path(self) -> Path:
        return self.data_dir / "pushbase.duckdb"
