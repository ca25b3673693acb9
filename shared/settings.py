"""Settings read once from the environment (pydantic-settings); services subclass ServiceSettings."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """Where the broker is and how to authenticate: env KAFKA_*."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_keyfile_password: SecretStr | None = None
    client_id: str = "loopline"
    request_timeout_ms: int = Field(15_000, ge=1_000)
    replication_factor: int = Field(1, ge=1, description="Replicas of the topics Loopline creates")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to every aiokafka client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
                password=self.ssl_keyfile_password.get_secret_value() if self.ssl_keyfile_password else None,
            )
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return kwargs


class ServiceSettings(BaseSettings):
    """What every service needs (env LOOPLINE_*); subclasses set their own env_prefix for the rest."""

    model_config = SettingsConfigDict(env_prefix="LOOPLINE_", extra="ignore", populate_by_name=True)

    spec_path: Path = Field(
        Path("examples/fraud/pipeline.yaml"),
        validation_alias="LOOPLINE_SPEC_PATH",
        description="Pipeline spec YAML",
    )
    topic_prefix: str = Field(
        "",
        validation_alias="LOOPLINE_TOPIC_PREFIX",
        description="Prepended to every topic and consumer group name (isolates tests and tenants); "
        "'.' is added unless it ends in '.', '-' or '_' (acme -> acme.events)",
    )
    log_level: str = Field("INFO", validation_alias="LOOPLINE_LOG_LEVEL")
    max_future_s: float = Field(
        300.0, ge=0, validation_alias="LOOPLINE_MAX_FUTURE_S",
        description="Event times and labels' observed_at further ahead of the service's clock are refused "
                    "(code `future`): one such event would make every later event of its entity late")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
