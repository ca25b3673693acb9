"""Feature service settings (env FEATURES_*, plus LOOPLINE_* and KAFKA_* from the base)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.stream import StreamSettings


class FeaturesSettings(StreamSettings):
    model_config = SettingsConfigDict(env_prefix="FEATURES_", extra="ignore", populate_by_name=True)

    port: int = Field(8002, ge=1, le=65535, description="HTTP port for /healthz, /readyz, /metrics")
    data_dir: Path = Field(Path("var/features"), description="Local table store (RocksDB) of this worker")
    offline_url: str = Field("var/offline", description="Offline store (Parquet) path or file:// URL")
    offline: bool = Field(True, description="Write events, snapshots and examples to the offline store")
    offline_flush_rows: int = Field(20_000, ge=1, description="Rows buffered before a Parquet write")
    offline_flush_s: float = Field(10.0, gt=0, description="Longest wait before a Parquet write")
    cache_events: int = Field(2_000_000, ge=1000, description="Events of decoded entity states kept in memory")
    cache_entities: int = Field(20_000, ge=10, description="Decoded entity states kept in memory")
    join_wall_grace_s: float = Field(
        86_400.0, ge=0, description="Join entries are forgotten this long after max_delay has passed on the worker's "
                                    "clock, labelled or not (the label clock expires them sooner)")
    max_snapshot_bytes: int = Field(900_000, ge=10_000, le=1_000_000,
                                    description="Events whose snapshot record would be larger are dead-lettered")
