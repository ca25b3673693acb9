"""The plain FastAPI peer of bench/serving.py: what a user writes by hand to serve a fitted
scikit-learn pipeline. POST /predict with one JSON object (a row) or a list of them -> a pandas
DataFrame -> predict_proba -> {"scores": [P(positive class) per row]}.

    PLAIN_MODEL_PATH=model.skops uvicorn --factory bench.peers.plain_app:create_app --port 8000

(An `async def` route: for a CPU-light predict it beats a thread-pool `def` route on 2 cores.)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import skops.io
from fastapi import Body, FastAPI


def load_pipeline(path: str | Path) -> Any:
    """The fitted pipeline from a skops file (the artifact bench/serving.py registers for Loopline)."""
    data = Path(path).read_bytes()
    return skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))


def create_app(model_path: str | None = None) -> FastAPI:
    """The app serving the pipeline at `model_path` (default: env PLAIN_MODEL_PATH)."""
    model = load_pipeline(model_path or os.environ["PLAIN_MODEL_PATH"])
    app = FastAPI(title="plain predict_proba")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(rows: Annotated[dict[str, Any] | list[dict[str, Any]], Body()]) -> dict[str, list[float]]:
        frame = pd.DataFrame([rows] if isinstance(rows, dict) else rows)
        return {"scores": model.predict_proba(frame)[:, 1].tolist()}

    return app
