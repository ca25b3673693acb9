"""Monitor settings (env MONITOR_*, plus LOOPLINE_* and KAFKA_* from the base)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.stream import StreamSettings


class MonitorSettings(StreamSettings):
    model_config = SettingsConfigDict(env_prefix="MONITOR_", extra="ignore", populate_by_name=True)

    port: int = Field(8005, ge=1, le=65535, description="HTTP port: alerts, subscriptions, /healthz, /readyz, /metrics")
    data_dir: Path = Field(Path("var/monitor"), description="Local state of this worker (the runtime's)")
    api_keys: list[str] = Field(
        default_factory=list, description="'<sha256 of the key>:admin' entries (python -m shared.auth admin); "
                                          "none: the subscription routes are open")
    join_ttl_s: float | None = Field(
        None, gt=0, description="How long a prediction waits for its label and feature snapshot (and they for it) "
                                "before it is dropped from the join; default: twice the spec's label max_delay")
    snapshot_ttl_s: float = Field(
        3600.0, gt=0, description="How long a feature snapshot waits for the prediction of its event (skew check)")
    skew_max_share: float = Field(
        0.0, ge=0, le=1, description="Share of compared predictions whose features may differ from the feature "
                                     "service's snapshot before a skew alert fires (0: any difference)")
    # webhook delivery (services.monitor.webhooks)
    webhook_allow: list[str] = Field(
        default_factory=list, description="Hosts or CIDR ranges that webhook URLs may resolve to even though they "
                                          "are loopback, private or link-local (by default those are refused)")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Timeout of one delivery attempt")
    webhook_max_attempts: int = Field(8, ge=1, description="Attempts per delivery before it goes to the dead letters")
    webhook_backoff_s: float = Field(0.5, gt=0, description="First retry delay (doubles per attempt, full jitter)")
    webhook_backoff_max_s: float = Field(300.0, gt=0, description="Longest retry delay (also caps Retry-After)")
    webhook_queue_max: int = Field(
        1000, ge=1, description="Deliveries waiting per subscription; more go to the dead letters (reason backlog), "
                                "so a slow receiver's backlog stays bounded")
    webhook_max_pending_alerts: int = Field(
        10000, ge=1, description="Alerts read but not yet done (delivered, dead-lettered or disabled) before reading "
                                 "pauses; their offsets are committed only once done")
    webhook_max_subscriptions: int = Field(1000, ge=1, description="Subscriptions kept at most (POST answers 409)")
