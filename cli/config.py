"""Where the CLI finds a deployment: service base URLs, the API key, Kafka and the topic prefix, read
once from the environment (LOOPLINE_*, KAFKA_*) and overridden by the global options."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import KafkaSettings

SERVICES = ("ingest", "features", "trainer", "serving", "monitor")


class CliSettings(BaseSettings):
    """env LOOPLINE_* (and KAFKA_* for the broker); the defaults are the local deployment's."""

    model_config = SettingsConfigDict(env_prefix="LOOPLINE_", extra="ignore")

    ingest_url: str = Field("http://127.0.0.1:8001", description="Ingest base URL")
    features_url: str = Field("http://127.0.0.1:8002", description="Feature worker base URL (its /readyz)")
    trainer_url: str = Field("http://127.0.0.1:8003", description="Trainer base URL")
    serving_url: str = Field("http://127.0.0.1:8004", description="Serving base URL")
    monitor_url: str = Field("http://127.0.0.1:8005", description="Monitor base URL")
    api_key: SecretStr | None = Field(None, description="API key sent as 'Authorization: Bearer <key>'")
    topic_prefix: str | None = Field(None, description="Topic prefix of the deployment (default: the one "
                                                       "`loopline up` recorded, else none)")
    spec_path: Path = Field(Path("examples/fraud/pipeline.yaml"), description="The pipeline spec")
    timeout_s: float = Field(10.0, gt=0, description="HTTP timeout per request")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    def url(self, service: str) -> str:
        return getattr(self, f"{service}_url").rstrip("/")

    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None
