"""What every command gets: the settings (env, then the global options) and a way to call a service."""
from __future__ import annotations

import os
from dataclasses import dataclass

import typer
from rich.console import Console

from cli.client import Api
from cli.config import CliSettings
from shared.settings import KafkaSettings

console = Console()
err = Console(stderr=True)


@dataclass
class Context:
    settings: CliSettings

    def api(self, service: str, key: str | None = None) -> Api:
        return Api(self.settings, service, key)

    def prefix(self) -> str:
        """The topic prefix: --prefix / LOOPLINE_TOPIC_PREFIX, else what `loopline up` recorded, else none."""
        if self.settings.topic_prefix is not None:
            return self.settings.topic_prefix
        from deploy.local import read_state

        state = read_state()
        return state["prefix"] if state else ""


    def kafka(self) -> KafkaSettings:
        """The Kafka settings (KAFKA_*); without KAFKA_BOOTSTRAP_SERVERS, the broker `loopline up` recorded."""
        if "KAFKA_BOOTSTRAP_SERVERS" not in os.environ:
            from deploy.local import read_state

            if state := read_state():
                return self.settings.kafka.model_copy(update={"bootstrap_servers": state["bootstrap"]})
        return self.settings.kafka


def ctx_of(ctx: typer.Context) -> Context:
    return ctx.find_root().obj
