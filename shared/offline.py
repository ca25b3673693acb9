"""The offline store: events, feature snapshots and training examples as Parquet, partitioned by
event date, for batch work (training, exploration) and replay.

Layout: <root>/<dataset>/date=YYYY-MM-DD/<part>.parquet. Columns come from the spec, so every
file of a dataset has the same schema. Writers are at-least-once: readers drop repeated event ids.
"""
from __future__ import annotations

import os
import uuid
from abc import ABC, abstractmethod
from datetime import date
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from shared.serialization import parse_time
from shared.spec import PipelineSpec

Dataset = Literal["events", "snapshots", "training_examples"]
DATASETS: tuple[Dataset, ...] = ("events", "snapshots", "training_examples")

_ARROW = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
          "category": pa.string(), "timestamp": pa.timestamp("us", tz="UTC")}
_TS = pa.timestamp("us", tz="UTC")


def dataset_schema(spec: PipelineSpec, dataset: Dataset) -> pa.Schema:
    """Arrow schema of a dataset: envelope columns, the event's fields, then features and label."""
    cols = [("event_id", pa.string()), ("entity", pa.string()), ("occurred_at", _TS)]
    if dataset == "events":
        cols += [("ingested_at", _TS), ("source", pa.string())]
    cols += [(name, _ARROW[f.type]) for name, f in spec.event.fields.items()]
    if dataset != "events":
        cols += [("feature_hash", pa.string())]
        cols += [(f.name, pa.int64() if f.agg in ("count", "distinct") else pa.float64())
                 for f in spec.features.definitions]
    if dataset == "training_examples":
        label_type = {"binary": pa.bool_(), "multiclass": pa.string(), "regression": pa.float64()}
        cols += [(spec.label.name, label_type[spec.label.type]), ("labelled_at", _TS)]
    return pa.schema(cols)


def flatten(spec: PipelineSpec, dataset: Dataset, record: dict[str, Any]) -> dict[str, Any]:
    """One wire record (Event, FeatureSnapshot or TrainingExample dict) as a flat row."""
    row = {"event_id": record["event_id"], "entity": record.get("entity"),
           "occurred_at": parse_time(record["occurred_at"])}
    if dataset == "events":
        row["ingested_at"] = parse_time(record["ingested_at"])
        row["source"] = record["source"]
    for name, f in spec.event.fields.items():
        value = record["data"].get(name)
        row[name] = parse_time(value) if f.type == "timestamp" and value is not None else value
    if dataset != "events":
        row["feature_hash"] = record["feature_hash"]
        row.update(record["features"])
    if dataset == "training_examples":
        row[spec.label.name] = record["label"]
        row["labelled_at"] = parse_time(record["labelled_at"])
    return row


class OfflineStore(ABC):
    """Where batch datasets live; chosen by URL (`open_store`)."""

    @abstractmethod
    def write(self, dataset: Dataset, rows: list[dict[str, Any]], part: str) -> list[str]:
        """Write rows (flat, see `flatten`) split by event date; return the files written."""

    @abstractmethod
    def read(self, dataset: Dataset, start: date | None = None, end: date | None = None) -> pd.DataFrame:
        """Rows with start <= event date <= end, each event id once, in event-time order."""


class LocalParquetStore(OfflineStore):
    def __init__(self, root: str | Path, spec: PipelineSpec):
        self.root = Path(root)
        self.spec = spec
        self.schemas = {d: dataset_schema(spec, d) for d in DATASETS}

    def write(self, dataset: Dataset, rows: list[dict[str, Any]], part: str) -> list[str]:
        if not rows:
            return []
        schema = self.schemas[dataset]
        by_day: dict[date, list[dict[str, Any]]] = {}
        for row in rows:
            by_day.setdefault(row["occurred_at"].date(), []).append(row)
        written = []
        for day, day_rows in sorted(by_day.items()):
            folder = self.root / dataset / f"date={day.isoformat()}"
            folder.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist(day_rows, schema=schema)
            final = folder / f"{part}.parquet"
            tmp = folder / f".{part}.{uuid.uuid4().hex}.tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, final)  # readers never see half a file
            written.append(str(final))
        return written

    def read(self, dataset: Dataset, start: date | None = None, end: date | None = None) -> pd.DataFrame:
        folder = self.root / dataset
        schema = self.schemas[dataset]
        if not folder.exists():
            return schema.empty_table().to_pandas()
        files = []
        for day_dir in sorted(folder.glob("date=*")):
            day = date.fromisoformat(day_dir.name.removeprefix("date="))
            if (start is None or day >= start) and (end is None or day <= end):
                files += sorted(day_dir.glob("*.parquet"))
        if not files:
            return schema.empty_table().to_pandas()
        table = pds.dataset([str(f) for f in files], schema=schema, format="parquet").to_table()
        df = table.to_pandas()
        df = df.drop_duplicates("event_id", keep="last")
        return df.sort_values(["occurred_at", "event_id"], kind="stable").reset_index(drop=True)


def open_store(url: str, spec: PipelineSpec) -> OfflineStore:
    """'file:///abs/path' or a plain path → local Parquet (object stores would plug in here)."""
    if url.startswith("file://"):
        return LocalParquetStore(url.removeprefix("file://"), spec)
    if "://" in url:
        raise ValueError(f"unsupported offline store URL '{url}'; use a path or file://")
    return LocalParquetStore(url, spec)
