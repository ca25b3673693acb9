"""Trainer settings (env TRAINER_*, plus LOOPLINE_* and KAFKA_* from the base)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.stream import StreamSettings


class TrainerSettings(StreamSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINER_", extra="ignore", populate_by_name=True)

    port: int = Field(8003, ge=1, le=65535, description="HTTP port: the registry API, /healthz, /readyz, /metrics")
    data_dir: Path = Field(Path("var/trainer"), description="Local state of this worker (the runtime's)")
    artifact_url: str = Field("var/artifacts", description="Artifact store: a path, file:// or any fsspec URL")
    signing_key: SecretStr | None = Field(
        None, description="HMAC-SHA256 key signing every artifact; readers refuse unsigned or wrongly signed ones")
    api_keys: list[str] = Field(
        default_factory=list, description="'<sha256 of the key>:admin' entries (python -m shared.auth admin); "
                                          "none: the admin routes are open")
    publish_every_examples: int = Field(
        1000, ge=1, description="Online (river) models publish a version after this many new examples ...")
    publish_every_s: float = Field(60.0, gt=0, description="... or this long after the last one, if they learned any")
    keep_versions: int = Field(
        20, ge=2, description="Versions kept per model (besides the champion and the last ones); older records "
                              "are deleted from the registry and their artifacts from the store")
    fit_threads: int = Field(
        1, ge=1, description="Native threads (OpenMP, BLAS) per batch fit. 1 by default: the trainer shares the "
                             "machine with Kafka and the other services, and on busy cores OpenMP threads spin-wait "
                             "(bench.fit_threads: a fit taking 0.45 s on 2 idle cores took 31 s with 2 threads and "
                             "3.5 s with 1 beside 4 busy processes). Raise it on cores the trainer has to itself")
    crash_after_artifact: bool = Field(
        False, description="Fault injection for tests: exit right after writing an artifact, before its record")
