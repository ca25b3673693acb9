"""Serving settings (env SERVING_*, plus LOOPLINE_* and KAFKA_* from the base)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ServingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SERVING_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(8004, ge=1, le=65535)
    data_dir: Path = Field(Path("var/serving"), description="The local replica of the feature state (RocksDB)")
    artifact_url: str = Field("var/artifacts", description="The artifact store the trainer writes to")
    signing_key: SecretStr | None = Field(None, description="Artifacts must carry a valid HMAC-SHA256 signature")
    api_keys: list[str] = Field(default_factory=list, description="'<sha256 of the key>:predict' entries; none: open")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Larger request bodies get 413")
    max_batch: int = Field(1000, ge=1, description="More events in one batch request get 413")
    max_concurrency: int = Field(64, ge=1, description="Requests scored at once; more get 503 at once (no queue)")
    request_timeout_s: float = Field(2.0, gt=0, description="A request not answered by then gets 503")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503")
    forward_events: bool = Field(
        False, description="Also send every scored event to `events` (ingest's validation and idempotency); a "
                           "request may ask for it with ?forward=true")
    log_buffer: int = Field(100_000, ge=100, description="Predictions waiting for the log; when full, they are "
                                                         "counted as undelivered and /readyz fails")
    log_linger_ms: float = Field(20.0, ge=0, le=1000, description="Predictions are sent to the log in batches "
                                 "gathered over this long (one produce request per linger instead of per request)")
    cache_events: int = Field(2_000_000, ge=1000, description="Events of decoded entity states kept in memory")
    cache_entities: int = Field(50_000, ge=10, description="Decoded entity states kept in memory")
