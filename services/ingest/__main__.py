"""python -m services.ingest"""
from __future__ import annotations

import uvicorn

from services.ingest.app import create_app
from services.ingest.config import IngestSettings
from shared.logging import configure_logging


def main() -> None:
    settings = IngestSettings()
    configure_logging("ingest", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_config=None, access_log=False, loop="uvloop", http="httptools",
                timeout_graceful_shutdown=20)


if __name__ == "__main__":
    main()
