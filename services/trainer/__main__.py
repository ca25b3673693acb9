"""python -m services.trainer: read the registry, then run the trainer (one per pipeline)."""
from __future__ import annotations

import asyncio

from services.trainer.app import create_app
from services.trainer.config import TrainerSettings
from shared.kafka import ensure_topics
from shared.registry import read_registry
from shared.stream.worker import run, use_uvloop
from shared.topics import Topics


def main() -> None:
    use_uvloop()  # before anything creates an event loop
    settings = TrainerSettings()
    topics = Topics(settings.topic_prefix)

    async def load():
        await ensure_topics(settings.kafka, topics, [topics["models"]])
        return await read_registry(settings.kafka, topics["models"])
    registry, offsets = asyncio.run(load())
    app = create_app(settings, registry, offsets)
    run(app, outputs=app.output_topics)


if __name__ == "__main__":
    main()
