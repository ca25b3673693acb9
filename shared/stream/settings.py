"""Settings every stream service reads (each under its own env prefix, e.g. FEATURES_FETCH_WAIT_MS)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import ServiceSettings


class StreamSettings(ServiceSettings):
    """The stream runtime's settings; a service's Settings subclasses it and sets its env prefix."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535, description="HTTP port for /healthz, /readyz, /metrics")
    data_dir: Path = Field(Path("var/stream"), description="Local table store (RocksDB) of this worker")
    session_timeout_s: float = Field(
        20.0, gt=0, description="Group session timeout: how soon a dead worker's partitions move")
    commit_interval_s: float = Field(1.0, gt=0, description="Offset commit interval")
    stall_after_s: float = Field(
        60.0, gt=0, description="/readyz fails when lag stands still, output waits or the lag cannot be read this long")
    fetch_wait_ms: int = Field(
        20, ge=0, le=1500, description="Longest fetch wait (faust's fixed 1.5 s held a busy topic behind a quiet one)")
    max_poll_records: int = Field(1000, ge=1, description="Records per fetch, i.e. at most per batch")
    max_in_flight_records: int = Field(
        4000, ge=1, description="Records delivered but not yet acked; bounds the memory of unstored table writes")
    changelog_linger_s: float = Field(
        0.05, ge=0, description="Changelog records of successive batches go out together after this long")
    changelog_flush_records: int = Field(1000, ge=1, description="... or at once when this many are waiting")
    output_timeout_s: float = Field(
        60.0, gt=0, description="The worker stops when output stays unacknowledged this long (it restarts from its "
                                "last commit)")
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="After SIGTERM/SIGINT the process exits at the latest this long later")
    rocksdb_write_buffer_mib: int = Field(4, ge=1, description="RocksDB write buffer per table partition (x2)")
    rocksdb_block_cache_mib: int = Field(8, ge=1, description="RocksDB block cache per table partition")
