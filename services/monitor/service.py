"""The monitor's state and what it does with each record: drift windows over the champion's
predictions, the durable prediction ⋈ label ⋈ snapshot join (a stream table), the concept-drift
detector, rolling performance per version and variant, bias by segment, train/serve skew, and the
alert book. One monitor runs per pipeline: the join lives in the table's partition 0 whatever the
source partition (predictions, labels and snapshots of an event may sit in different partitions)."""
from __future__ import annotations

import logging
import math
import struct
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from services.monitor.config import MonitorSettings
from services.monitor.domain import (
    AlertBook, BiasWindow, InputWindows, Labelled, RollingPerformance, Watch, error_of, fingerprint, label_of,
    make_detector, metric_watch, skew, watched_statistic,
)
from services.monitor.metrics import MonitorMetrics
from shared.errors import ValidationFailed
from shared.events import Alert
from shared.registry import Registry
from shared.spec import PipelineSpec
from shared.stream import TableView

log = logging.getLogger(__name__)
JOIN_PARTITION = 0
_PRED, _LABEL, _SNAP, _EXPIRY = b"p", b"l", b"s", b"x"
_MS = struct.Struct(">Q")


def _epoch(value: str | None) -> float:
    if not value:
        return 0.0
    return datetime.fromisoformat(value).timestamp()


class Monitor:
    def __init__(self, spec: PipelineSpec, settings: MonitorSettings, registry: Registry, metrics: MonitorMetrics):
        self.spec, self.settings, self.registry, self.metrics = spec, settings, registry, metrics
        m = spec.monitoring
        self.book = AlertBook(m.hysteresis)
        self.ttl_s = settings.join_ttl_s or 2 * spec.label.max_delay.total_seconds()
        self.snapshot_ttl_s = min(self.ttl_s, settings.snapshot_ttl_s)
        self.windows: tuple[tuple[str, int], InputWindows] | None = None
        self.detector: tuple[tuple[str, int], Any] | None = None
        self.quiet_since_drift = 0
        self.performance: dict[tuple[str, int, str], RollingPerformance] = {}
        self.bias = BiasWindow(spec)
        self.skew_compared = self.skew_mismatched = 0
        self.clock = 0.0  # the newest record time seen (event time: a backfill expires on its own clock)
        self.now = lambda: datetime.now(UTC)

    # ------------------------------------------------------------------ predictions

    def on_prediction(self, view: TableView, p: dict[str, Any]) -> list[Alert]:
        out: list[Alert] = []
        self._advance(_epoch(p.get("predicted_at")), "predicted_at")
        name, version, variant, event_id = p["model_name"], int(p["model_version"]), p["variant"], p["event_id"]
        if variant == "champion":
            out += self._drift(name, version, p)
        entry = {"n": name, "v": version, "r": variant, "s": p["score"], "d": p["predicted"], "pr": p.get("proba")}
        if variant == "champion":
            entry["f"] = p.get("features") or {}
        key = event_id.encode()
        label = view.get(_LABEL + key)
        if label is not None:
            out += self._labelled(entry, orjson.loads(label))
            entry["done"] = True
        snapshot = view.get(_SNAP + key) if variant == "champion" else None
        if snapshot is not None:
            out += self._skew(entry["f"], orjson.loads(snapshot))
            entry.pop("f")
        stored = view.get(_PRED + key)
        entries = orjson.loads(stored) if stored is not None else []
        entries.append(entry)
        if all(e.get("done") for e in entries) and not any("f" in e for e in entries):
            if stored is not None:
                view.delete(_PRED + key)
        else:
            if stored is None:
                self._expire_at(view, _PRED, key, self.ttl_s)
            view.set(_PRED + key, orjson.dumps(entries))
        return out

    def _drift(self, name: str, version: int, p: dict[str, Any]) -> list[Alert]:
        if self.windows is None or self.windows[0] != (name, version):
            found = self.registry.get(name, version)
            if found is None or not found.reference:
                return []
            size = self.spec.monitoring.data_drift.window_size
            self.windows = ((name, version), InputWindows(found.reference, found.inputs, size))
        windows = self.windows[1]
        if not windows.add(p.get("features") or {}, float(p["score"])):
            return []
        features, scores = windows.close()
        out: list[Alert] = []
        drift, size = self.spec.monitoring.data_drift, windows.window_size
        for feature, values in features.items():
            for stat, value in values.items():
                self.metrics.drift.labels(feature, stat).set(value)
            kind = windows.features[feature].kind
            stat, worse_up = watched_statistic(drift, kind)
            alert = self.book.observe(Watch("data_drift", feature, stat, drift.limit, worse_up, name, version),
                                      values[stat], window=size, now=self.now(),
                                      details={k: round(v, 6) for k, v in values.items()})
            out += [alert] if alert else []
        if scores is not None:
            pd_spec = self.spec.monitoring.prediction_drift
            for stat, value in scores.items():
                self.metrics.prediction_drift.labels(stat).set(value)
            stat, worse_up = watched_statistic(pd_spec, "numeric")
            alert = self.book.observe(Watch("prediction_drift", "score", stat, pd_spec.limit, worse_up, name, version),
                                      scores[stat], window=size, now=self.now(),
                                      details={k: round(v, 6) for k, v in scores.items()})
            out += [alert] if alert else []
        return out

    # ------------------------------------------------------------------ labels (training examples)

    def on_example(self, view: TableView, ex: dict[str, Any]) -> list[Alert]:
        self._advance(_epoch(ex.get("labelled_at")), "labelled_at")
        key = ex["event_id"].encode()
        data = ex.get("data") or {}
        label = {"y": label_of(self.spec, ex["label"]),
                 "seg": {s: (None if data.get(s) is None else str(data[s]).lower() if isinstance(data[s], bool)
                             else str(data[s])) for s in self.spec.monitoring.segments}}
        out: list[Alert] = []
        stored = view.get(_PRED + key)
        if stored is not None:
            entries = orjson.loads(stored)
            for e in entries:
                if not e.get("done"):
                    out += self._labelled(e, label)
                    e["done"] = True
            if any("f" in e for e in entries):
                view.set(_PRED + key, orjson.dumps(entries))
            else:
                view.delete(_PRED + key)
        # kept for predictions that come after it (a backfill, or a shadow's record), until it expires
        if view.get(_LABEL + key) is None:
            self._expire_at(view, _LABEL, key, self.ttl_s)
        view.set(_LABEL + key, orjson.dumps(label))
        return out

    def _labelled(self, e: dict[str, Any], label: dict[str, Any]) -> list[Alert]:
        self.metrics.labelled.labels(e["r"]).inc()
        row = Labelled(float(e["s"]), e["d"], e.get("pr"), label["y"], label.get("seg") or {})
        out: list[Alert] = []
        name, version, variant = e["n"], int(e["v"]), e["r"]
        perf = self.performance.get((name, version, variant))
        if perf is None:
            # one window per variant: a version that no longer serves it is dropped
            for k in [k for k in self.performance if k[2] == variant]:
                del self.performance[k]
            perf = self.performance[(name, version, variant)] = RollingPerformance(
                self.spec, self.spec.monitoring.performance_window)
        values = perf.add(row)
        if values is not None:
            for metric, value in values.items():
                self.metrics.performance.labels(name, str(version), variant, metric).set(value)
            primary = self.spec.metrics.primary
            watch = metric_watch(self.spec, variant, primary, name, version)
            if watch is not None and primary in values:
                alert = self.book.observe(watch, values[primary], window=len(perf.rows), now=self.now(),
                                          details={"metrics": values})
                out += [alert] if alert else []
        if variant == "champion":
            out += self._concept(name, version, row)
            if self.spec.monitoring.segments and self.bias.add(row):
                out += self._bias(name, version)
        return out

    def _concept(self, name: str, version: int, row: Labelled) -> list[Alert]:
        if self.detector is None or not self._one_learner(self.detector[0], (name, version)):
            self.detector = ((name, version), make_detector(self.spec))
        detector = self.detector[1]
        self.detector = ((name, version), detector)
        detector.update(error_of(self.spec, row.predicted, row.label))
        key = fingerprint("concept_drift", "champion", self.spec.monitoring.concept_drift.detector)
        if detector.drift_detected:
            self.metrics.concept_drifts.inc()
            self.quiet_since_drift = 0
            c = self.spec.monitoring.concept_drift
            estimation = self._error_estimate(detector, name, version)
            if key not in self.book.firing:
                now = self.now()
                alert = Alert(fingerprint=key, kind="concept_drift", status="firing", severity="warning",
                              subject="champion", statistic=c.detector, value=estimation, threshold=c.delta,
                              window=0, model_name=name, model_version=version, started_at=now, updated_at=now,
                              details={"error_estimate": estimation, "windows": 1})
                self.book.firing[key] = alert
                return [alert]
            return []
        self.quiet_since_drift += 1
        if key in self.book.firing and self.quiet_since_drift >= self.spec.monitoring.performance_window:
            resolved = self.book.resolve(key, now=self.now(), reason=f"no drift in {self.quiet_since_drift} "
                                                                      "labelled predictions")
            return [resolved] if resolved else []
        return []

    def _one_learner(self, old: tuple[str, int], new: tuple[str, int]) -> bool:
        """Whether version `new` serves on with the learner of `old`: the same version, or a later
        checkpoint of the same online model. An online model's versions learn on from one another, so
        their errors are one stream; and an online champion publishes a version every
        TRAINER_PUBLISH_EVERY_EXAMPLES, so a detector started afresh at each would rarely see enough
        errors to find a drift. A batch retrain is a new fit: its errors start a new stream."""
        if old == new:
            return True
        found = self.registry.get(*new)
        return old[0] == new[0] and found is not None and found.evaluation == "prequential"

    def _error_estimate(self, detector: Any, name: str, version: int) -> float:
        """ADWIN's estimate of the error rate; Page-Hinkley and KSWIN have none, so the champion's
        error over its rolling performance window (an Alert's value must be a finite number)."""
        estimation = getattr(detector, "estimation", None)
        if estimation is not None and math.isfinite(estimation):
            return float(estimation)
        perf = self.performance.get((name, version, "champion"))
        rows = list(perf.rows) if perf is not None else []
        if not rows:
            return 0.0
        return sum(error_of(self.spec, r.predicted, r.label) for r in rows) / len(rows)

    def _bias(self, name: str, version: int) -> list[Alert]:
        out: list[Alert] = []
        size = self.bias.n
        for f in self.bias.close():
            subject = f"{f.field}={f.value}"
            self.metrics.bias.labels(f.field, f.value, f.statistic).set(f.measured)
            alert = self.book.observe(Watch("bias", subject, f.statistic, f.threshold, f.higher_is_worse, name,
                                            version), f.measured, window=size, now=self.now(),
                                      details={"rates": f.rates})
            out += [alert] if alert else []
        return out

    # ------------------------------------------------------------------ feature snapshots (skew)

    def on_snapshot(self, view: TableView, snap: dict[str, Any]) -> list[Alert]:
        key = snap["event_id"].encode()
        features = snap.get("features") or {}
        stored = view.get(_PRED + key)
        if stored is not None:
            entries = orjson.loads(stored)
            out: list[Alert] = []
            for e in entries:
                if "f" in e:
                    out += self._skew(e.pop("f"), features)
            if all(e.get("done") for e in entries):
                view.delete(_PRED + key)
            else:
                view.set(_PRED + key, orjson.dumps(entries))
            return out
        if view.get(_SNAP + key) is None:
            self._expire_at(view, _SNAP, key, self.snapshot_ttl_s)
        view.set(_SNAP + key, orjson.dumps(features))
        return []

    def _skew(self, served: dict[str, Any], snapshot: dict[str, Any]) -> list[Alert]:
        differ = skew(served, snapshot, self.spec.monitoring.skew_threshold)
        self.metrics.skew_compared.inc()
        for name in differ:
            self.metrics.skew_mismatches.labels(name).inc()
        self.skew_compared += 1
        self.skew_mismatched += bool(differ)
        size = self.spec.monitoring.data_drift.window_size
        if self.skew_compared < size:
            return []
        share = self.skew_mismatched / self.skew_compared
        self.metrics.skew_share.set(share)
        self.skew_compared = self.skew_mismatched = 0
        champion = self.registry.champion()
        watch = Watch("skew", "features", "mismatch_share", self.settings.skew_max_share, True,
                      champion.name if champion else None, champion.version if champion else None)
        alert = self.book.observe(watch, share, window=size, now=self.now())
        return [alert] if alert else []

    # ------------------------------------------------------------------ expiry

    def _advance(self, t: float, name: str) -> None:
        """Move the record clock to `t`; a time further ahead of the wall clock than max_future_s is
        refused (dead-lettered), or one such record would expire every join entry waiting."""
        if t > time.time() + self.settings.max_future_s:
            raise ValidationFailed([{"field": name, "code": "future",
                                     "reason": f"more than {self.settings.max_future_s:.0f} s in the future"}])
        self.clock = max(self.clock, t)

    def _expire_at(self, view: TableView, kind: bytes, key: bytes, ttl_s: float) -> None:
        at = int((self.clock + ttl_s) * 1000)
        view.set(_EXPIRY + _MS.pack(at) + kind + key, b"")

    def expire(self, view: TableView, limit: int = 10_000) -> int:
        """Drop join entries whose time ran out on the record clock; returns how many."""
        horizon = _MS.pack(max(0, int(self.clock * 1000)))
        done = 0
        for k, _ in view.items_from(_EXPIRY):
            if not k.startswith(_EXPIRY) or k[1:9] > horizon or done >= limit:
                break
            kind, key = k[9:10], k[10:]
            if kind == _PRED and (stored := view.get(_PRED + key)) is not None:
                waiting = orjson.loads(stored)
                self.metrics.expired.labels("unlabelled" if any(not e.get("done") for e in waiting)
                                            else "no_snapshot").inc()
            view.delete(kind + key)
            view.delete(k)
            done += 1
        return done
