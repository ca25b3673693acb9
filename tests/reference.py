"""The documented feature semantics (shared/features.py docstring) recomputed the slow, obvious way
with pandas; unit tests compare the engine with it, integration tests the running service."""
from __future__ import annotations

import math
from collections import defaultdict

from datetime import datetime

import numpy as np
import pandas as pd

from shared.events import FeatureSnapshot
from shared.serialization import loads
from shared.spec import WINDOWED
from tests.data import FRAUD, wire


class Reference:
    """The documented semantics, recomputed from all earlier accepted events (no incremental state)."""

    def __init__(self, spec):
        self.spec = spec
        self.key = spec.entity.key if spec.entity else None
        self.lateness = spec.features.allowed_lateness.total_seconds()
        windows = [d.window.total_seconds() for d in spec.features.definitions if d.agg in WINDOWED]
        self.max_window = max(windows, default=0.0)
        self.retention = self.max_window + self.lateness
        self.fields = sorted({d.field for d in spec.features.definitions if d.field})
        self.accepted: dict = defaultdict(list)  # entity -> rows in arrival order
        self.max_t: dict = {}

    def process(self, event_id: str, t: float, fields: dict):
        """('new' | 'duplicate' | 'late', the accepted row the snapshot is for, maxT before the event)."""
        entity = fields[self.key] if self.key else None
        rows = self.accepted[entity]
        max_t = self.max_t.get(entity, -math.inf)
        kept = {r["event_id"]: r for r in rows if r["t"] >= max_t - self.retention}
        if event_id in kept:
            return "duplicate", kept[event_id], max_t
        if t < max_t - self.lateness:
            return "late", None, max_t
        row = {"entity": entity, "event_id": event_id, "t": t, "seq": len(rows),
               **{f: fields.get(f) for f in self.fields}}
        rows.append(row)
        self.max_t[entity] = max(max_t, t)
        return "new", row, max_t

    def _column(self, rows: list[dict], field: str) -> np.ndarray:
        values = pd.Series([r[field] for r in rows], dtype=object)
        if self.spec.event.fields[field].type in ("int", "float"):
            return pd.to_numeric(values).astype(float).to_numpy()  # missing -> NaN
        return values.to_numpy()  # missing -> None

    def _last_value(self, field: str, value):
        """`last` encoding: float/int as is, bool 0/1, category -> index in the spec's values."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        fs = self.spec.event.fields[field]
        if fs.type == "category":
            return fs.values.index(value)
        if fs.type in ("int", "bool"):
            return int(value)
        return float(value)

    def snapshots(self) -> dict:
        """{(entity, seq): features} for every accepted event.

        For each entity, a boolean matrix [event q, event x] marks the x in q's history that fall
        in a window; pandas then aggregates each row of the masked values.
        """
        out: dict = {}
        for entity, rows in self.accepted.items():
            t = np.array([r["t"] for r in rows])
            seq = np.array([r["seq"] for r in rows])
            earlier = seq[None, :] < seq[:, None]  # x arrived before q
            prior = earlier & (t[None, :] <= t[:, None])  # ... and is not later in event time
            # `last`: among q's prior events the one with the greatest (t, seq).
            order = np.lexsort((seq, t))
            prior_sorted = prior[:, order]
            has_prior = prior_sorted.any(axis=1)
            newest = order[len(rows) - 1 - np.argmax(prior_sorted[:, ::-1], axis=1)]
            feats: dict = {}
            for d in self.spec.features.definitions:
                if d.agg == "time_since_last":
                    latest = pd.DataFrame(np.where(prior, t[None, :], np.nan)).max(axis=1).to_numpy()
                    feats[d.name] = [float(t[q] - latest[q]) if has_prior[q] else None
                                     for q in range(len(rows))]
                    continue
                if d.agg == "last":
                    col = self._column(rows, d.field)
                    feats[d.name] = [self._last_value(d.field, col[newest[q]]) if has_prior[q] else None
                                     for q in range(len(rows))]
                    continue
                w = d.window.total_seconds()
                if d.kind == "sliding":
                    in_window = prior & (t[None, :] > (t - w)[:, None])
                else:
                    in_window = prior & (np.floor(t / w)[None, :] == np.floor(t / w)[:, None])
                if d.agg == "count":
                    feats[d.name] = [int(n) for n in in_window.sum(axis=1)]
                    continue
                col = self._column(rows, d.field)
                missing = np.nan if col.dtype == float else None
                masked = pd.DataFrame(np.where(in_window, col[None, :], missing))
                if d.agg == "distinct":
                    feats[d.name] = [int(n) for n in masked.nunique(axis=1, dropna=True)]
                    continue
                if d.agg == "ratio_to_mean":
                    mean = masked.mean(axis=1)
                    result = pd.Series(col).where(mean.notna() & (mean != 0)) / mean
                else:
                    result = {
                        "sum": lambda: masked.sum(axis=1),
                        "mean": lambda: masked.mean(axis=1),
                        "std": lambda: masked.std(axis=1, ddof=1),
                        "min": lambda: masked.min(axis=1),
                        "max": lambda: masked.max(axis=1),
                    }[d.agg]()
                feats[d.name] = [None if pd.isna(v) else float(v) for v in result]
            for q, row in enumerate(rows):
                assert row["seq"] == q
                out[(entity, q)] = {name: values[q] for name, values in feats.items()}
        return out


def assert_same(got: dict | None, want: dict, where: str) -> None:
    assert got is not None, where
    assert list(got) == list(want), where
    for name, w in want.items():
        g = got[name]
        if w is None:
            assert g is None, f"{where} {name}: engine {g!r}, pandas None"
        elif isinstance(w, int):
            assert type(g) is int and g == w, f"{where} {name}: engine {g!r}, pandas {w!r}"
        else:
            assert type(g) is float and math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-9), \
                f"{where} {name}: engine {g!r}, pandas {w!r}"


def covers(events: list[dict]):
    """Stop condition for read_topic: every event has a snapshot (duplicates do not count twice)."""
    wanted = {e["event_id"] for e in events}
    seen: set[str] = set()
    done = [0]

    def check(records) -> bool:
        for r in records[done[0]:]:
            seen.add(loads(r.value)["event_id"])
        done[0] = len(records)
        return wanted <= seen
    return check


def check_snapshots(records, events: list[dict]) -> dict[str, dict]:
    """Check every record against `FeatureSnapshot`, dedup by event_id (duplicates must be identical)
    and compare with the pandas reference; returns the reference's features by event id."""
    by_id: dict[str, dict] = {}
    for r in records:
        snap = wire(r.value, FeatureSnapshot)
        seen = by_id.setdefault(snap["event_id"], snap)
        assert seen["features"] == snap["features"], f"duplicate {snap['event_id']} differs"
        assert r.key == snap["entity"].encode()
    assert set(by_id) == {e["event_id"] for e in events}, "snapshots lost"
    ref = Reference(FRAUD)
    rows = {}
    for e in events:
        status, row, _ = ref.process(e["event_id"], ref_time(e), e["data"])
        assert status == "new"
        rows[(row["entity"], row["seq"])] = e
    expected = {}
    for (entity, seq), want in ref.snapshots().items():
        e = rows[(entity, seq)]
        snap = by_id[e["event_id"]]
        expected[e["event_id"]] = want
        try:
            assert_same(snap["features"], want, e["event_id"])
        except AssertionError as exc:
            history = [(x["event_id"], x["data"]["ts"], by_id[x["event_id"]]["features"])
                       for x in events if x["entity"] == entity]
            dupes = [(r.partition, r.offset, loads(r.value)["event_id"]) for r in records
                     if loads(r.value)["entity"] == entity]
            raise AssertionError(f"{exc}\nentity {entity} history: {history}\nrecords: {dupes}") from None
        assert snap["data"] == e["data"] and snap["occurred_at"] == e["occurred_at"]
    return expected


def ref_time(e: dict) -> float:
    return datetime.fromisoformat(e["data"]["ts"]).timestamp()
