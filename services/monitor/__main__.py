"""python -m services.monitor: read the registry and the alerts, then run the monitor (one per pipeline)."""
from __future__ import annotations

import asyncio

from services.monitor.app import create_app
from services.monitor.config import MonitorSettings
from shared.events import Alert
from shared.kafka import ensure_topics, read_to_end
from shared.registry import read_registry
from shared.stream.worker import run, use_uvloop
from shared.topics import Topics


def main() -> None:
    use_uvloop()  # before anything creates an event loop
    settings = MonitorSettings()
    topics = Topics(settings.topic_prefix)

    async def load():
        await ensure_topics(settings.kafka, topics, [topics["models"], topics["alerts"]])
        registry, offsets = await read_registry(settings.kafka, topics["models"])
        latest: dict[bytes, Alert | None] = {}  # the compacted topic's latest record per fingerprint

        def keep(record) -> None:
            try:
                latest[record.key] = Alert.model_validate_json(record.value) if record.value else None
            except ValueError:  # not an alert of ours: the stream's readers skip it too
                latest.pop(record.key, None)
        await read_to_end(settings.kafka, topics["alerts"], keep)
        return registry, offsets, [a for a in latest.values() if a is not None]
    registry, offsets, alerts = asyncio.run(load())
    app = create_app(settings, registry, offsets, alerts)
    run(app, outputs=app.output_topics)


if __name__ == "__main__":
    main()
