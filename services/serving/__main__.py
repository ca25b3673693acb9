"""python -m services.serving"""
from __future__ import annotations

import uvicorn

from services.serving.app import create_app
from services.serving.config import ServingSettings
from shared.logging import configure_logging


def main() -> None:
    settings = ServingSettings()
    configure_logging("serving", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False,
                loop="uvloop", http="httptools", timeout_graceful_shutdown=20)


if __name__ == "__main__":
    main()
