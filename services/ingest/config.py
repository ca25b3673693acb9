"""Ingest settings (env INGEST_*, plus LOOPLINE_* and KAFKA_* from the base)."""
from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.kafka import MAX_RECORD_BYTES
from shared.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(8001, ge=1, le=65535)
    api_keys: list[str] = Field(
        default_factory=list, description="'<sha256 of the key>:events:write' entries (python -m shared.auth "
                                          "events:write); none: the write routes are open")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Larger bodies get 413")
    max_batch_events: int = Field(10_000, ge=1, description="More events in one request get 413")
    produce_timeout_s: float = Field(10.0, gt=0, description="Broker ack wait before answering 503")
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with 503")
    raw_bridge: bool = Field(True, description="Validate the events.raw/labels.raw topics into events/labels")
    max_record_bytes: int = Field(
        512 * 1024, ge=1024, le=MAX_RECORD_BYTES,
        description="A record larger than this on Kafka (key + value) is rejected with code too_large "
                    "(HTTP) or dead-lettered (raw bridge)")
    bridge_stall_after_s: float = Field(
        60.0, gt=0,
        description="/readyz fails when the raw bridge has failed to produce, or made no progress "
                    "despite lag, for this long")
    health_interval_s: float = Field(1.0, gt=0)
