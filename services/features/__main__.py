"""python -m services.features: run one feature worker (scale out by starting more)."""
from __future__ import annotations

from services.features.app import create_app
from shared.stream.worker import run, use_uvloop


def main() -> None:
    use_uvloop()  # before anything creates an event loop
    app = create_app()
    run(app, outputs=app.output_topics)


if __name__ == "__main__":
    main()
