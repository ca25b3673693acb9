"""python -m services.monitor: read the registry, then run the monitor (one per pipeline)."""
from __future__ import annotations

import asyncio

from services.monitor.app import create_app
from services.monitor.config import MonitorSettings
from shared.kafka import ensure_topics
from shared.registry import read_registry
from shared.stream.worker import run
from shared.topics import Topics


def main() -> None:
    settings = MonitorSettings()
    topics = Topics(settings.topic_prefix)

    async def load():
        await ensure_topics(settings.kafka, topics, [topics["models"]])
        return await read_registry(settings.kafka, topics["models"])
    registry, offsets = asyncio.run(load())
    app = create_app(settings, registry, offsets)
    run(app, outputs=app.output_topics)


if __name__ == "__main__":
    main()
