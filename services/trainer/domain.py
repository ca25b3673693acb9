"""Trainer domain: online learning, the batch training window, training and evaluation, the metric
gate and registry changes. Plain classes and functions: no Kafka, no HTTP (tests call them directly).

Online (river) candidates learn from every training example as it comes, prequentially (predict,
then learn), and are checkpointed together every N examples or T seconds: a version per candidate
whose artifact holds the model and its prequential metric state, and whose lineage holds the
training-examples offsets learned so far. After a restart the trainer restores the last checkpoint
and skips the examples it covers, so none is learned twice and none is lost.

Batch (scikit-learn) candidates are retrained on the most recent examples (the window), evaluated on
a time-ordered holdout (the latest `holdout_fraction` of the window by event time, never a random
split), and gated: a candidate becomes champion only if it meets the spec's minimum for the primary
metric (an upper bound for losses) and beats the current champion, evaluated on the same holdout, by
the spec's margin; the first champion needs only the minimum.
"""
from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec
import numpy as np

from shared.events import DataRange, Lineage, ModelVersion
from shared.modeling import (
    PrequentialMetrics, Vectorizer, beats, build_model, constructor_params, data_statistics, encode_label,
    holdout_metrics, meets_minimum, model_classes, predict, predict_one_river, score_statistics,
)
from shared.registry import (
    ArtifactStore, Registry, artifact_key, code_version, digest, dump_model, load_model, package_versions, sign,
)
from shared.spec import ModelCandidate, PipelineSpec

DRIFT_KINDS = frozenset({"data_drift", "prediction_drift", "concept_drift", "performance"})


class Rejected(ValueError):
    """A record the trainer cannot use; it is dead-lettered with `code`."""

    def __init__(self, code: str, reason: str):
        self.code = code
        super().__init__(reason)


class Example(msgspec.Struct, gc=False):
    """One labelled example, decoded straight from a TrainingExample record (the fields the trainer
    reads; others are skipped): one msgspec pass, ~2 µs less per example than orjson + checks.
    gc=False: the collector does not track it (its fields are JSON values decoded afresh, which
    cannot refer back to it, so it is never part of a reference cycle)."""

    event_id: str
    t: Any = msgspec.field(name="occurred_at")  # the record's RFC 3339 text; epoch seconds once decoded
    features: dict[str, Any]
    data: dict[str, Any]
    label: Any = msgspec.UNSET  # encoded for the spec's task (shared.modeling.encode_label); may be null


_decode_example = msgspec.json.Decoder(Example).decode


def decode_example(spec: PipelineSpec, value: bytes | None) -> Example:
    """A training example from the wire, checked for what the trainer reads (Rejected if not)."""
    if value is None:
        raise Rejected("invalid", "a TrainingExample record must be a JSON object, not a tombstone")
    try:
        example = _decode_example(value)
    except msgspec.ValidationError as exc:  # JSON, but not what the trainer reads
        raise Rejected("invalid", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise Rejected("invalid_json", f"value is not valid JSON: {exc}") from None
    if example.label is msgspec.UNSET:
        raise Rejected("invalid", "'label' is missing")
    if not isinstance(example.t, str):
        raise Rejected("invalid", "'occurred_at' must be an RFC 3339 text")
    try:
        when = datetime.fromisoformat(example.t)
        # no offset: UTC (as shared.serialization)
        example.t = when.timestamp() if when.tzinfo is not None else when.replace(tzinfo=timezone.utc).timestamp()
        example.label = encode_label(spec, example.label)
    except (ValueError, TypeError) as exc:
        raise Rejected("invalid", str(exc)) from None
    return example


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------- online learning

@dataclass
class OnlineArtifact:
    """What an online version's artifact holds: the model, and (for the trainer alone) its
    prequential metric state and example count, so that learning resumes exactly."""

    model: Any
    metrics: PrequentialMetrics
    examples: int


@dataclass
class OnlineModel:
    candidate: ModelCandidate
    model: Any
    metrics: PrequentialMetrics
    examples: int = 0

    def learn(self, task: str, x: dict[str, float], y: Any) -> None:
        """Prequential: predict first (before this example is learned), score, then learn."""
        score, label, proba = predict_one_river(self.model, task, x)
        self.metrics.update(y, score, label, proba)
        self.model.learn_one(x, y)
        self.examples += 1


class OnlineTrainer:
    """The spec's river candidates, learning from every example in consumption order."""

    def __init__(self, spec: PipelineSpec, vectorizer: Vectorizer):
        self.spec, self.vectorizer, self.task = spec, vectorizer, spec.label.type
        self.models = {c.name: OnlineModel(c, build_model(c, spec), PrequentialMetrics(spec))
                       for c in spec.models if c.library == "river"}
        # per partition of training-examples: [first offset learned, next offset to learn]
        self.offsets: dict[int, list[int]] = {}
        self.pending = 0  # examples learned since the last checkpoint
        self.last_checkpoint = time.monotonic()

    @property
    def active(self) -> bool:
        return bool(self.models)

    def restore(self, registry: Registry, store: ArtifactStore, key: bytes | None) -> None:
        """Continue from the newest online versions in the registry (all checkpointed together)."""
        for name, online in self.models.items():
            latest = registry.latest(name)
            if latest is None:
                continue
            data = store.get(latest.artifact_uri)
            artifact = load_model(data, "river", sha256=latest.sha256, signature=latest.signature, key=key)
            online.model, online.metrics, online.examples = artifact.model, artifact.metrics, artifact.examples
            self.offsets = {int(p): list(r) for p, r in (latest.lineage.data.offsets or {}).items()}

    def learned(self, partition: int, offset: int) -> bool:
        """Whether the example at this offset is already in the models (from before a checkpoint)."""
        span = self.offsets.get(partition)
        return span is not None and offset < span[1]

    def learn(self, partition: int, offset: int, example: Example) -> None:
        self.learn_one(example)
        self.learned_run(partition, offset, offset, 1)

    def learn_one(self, example: Example) -> None:
        """Every online model learns the example (prequential); `learned_run` then records where from."""
        x = self.vectorizer.river_x(example.features, example.data)
        for online in self.models.values():
            online.learn(self.task, x, example.label)

    def learned_run(self, partition: int, first: int, last: int, n: int) -> None:
        """`n` examples of a partition, read from offsets `first`..`last`, were learned (`learn_one`)."""
        span = self.offsets.get(partition)
        if span is None:
            self.offsets[partition] = [first, last + 1]
        else:
            span[1] = last + 1
        self.pending += n

    def due(self, every_examples: int, every_s: float) -> bool:
        return self.pending >= every_examples or (
            self.pending > 0 and time.monotonic() - self.last_checkpoint >= every_s)


# ---------------------------------------------------------------- the batch training window

class ExampleWindow:
    """The most recent examples (up to `capacity`, by default spec.training.max_examples), vectorized,
    for batch training. A ring buffer: memory is fixed at `capacity` rows; an event id is kept once."""

    def __init__(self, spec: PipelineSpec, vectorizer: Vectorizer, capacity: int | None = None):
        self.capacity = spec.training.max_examples if capacity is None else capacity
        self.vectorizer = vectorizer
        self.X = np.empty((self.capacity, len(vectorizer.columns)), dtype=np.float64)
        self.y = np.empty(self.capacity, dtype=object)
        self.t = np.empty(self.capacity, dtype=np.float64)
        self.ids: list[str | None] = [None] * self.capacity
        self._index: dict[str, int] = {}
        self.size = 0
        self._next = 0
        self._sorted: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # snapshot()'s buffers

    def __len__(self) -> int:
        return self.size

    def add(self, example: Example) -> None:
        if example.event_id in self._index:
            return
        i = self._next
        old = self.ids[i]
        if old is not None:
            del self._index[old]
        self.X[i] = self.vectorizer.row(example.features, example.data)
        self.y[i], self.t[i], self.ids[i] = example.label, example.t, example.event_id
        self._index[example.event_id] = i
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, y, t) of the kept examples in event-time order: copies, in buffers this window keeps and
        reuses, so they stay valid while examples keep coming but only until the next snapshot (the
        trainer runs one retrain at a time). Reused rather than allocated per retrain: the pages of a
        fresh 60 MB array are faulted in on first touch, which took ~25 ms of a retrain here."""
        n = self.size
        if self._sorted is None:
            self._sorted = (np.empty_like(self.X), np.empty_like(self.y), np.empty_like(self.t))
        X, y, t = (a[:n] for a in self._sorted)
        order = np.argsort(self.t[:n], kind="stable")
        np.take(self.X[:n], order, axis=0, out=X)
        np.take(self.y[:n], order, out=y)
        np.take(self.t[:n], order, out=t)
        return X, y, t


# ---------------------------------------------------------------- batch training (runs in a worker thread)

@dataclass
class Trained:
    """One candidate fitted and evaluated on the holdout."""

    candidate: ModelCandidate
    artifact: bytes
    metrics: dict[str, float]
    reference: dict[str, Any]
    examples: int
    start: float
    end: float
    error: str = ""


@dataclass
class BatchResult:
    trained: list[Trained]
    champion_metrics: dict[str, float] | None  # the current champion on the same holdout
    holdout: tuple[int, float, float]  # size, first and last event time


def holdout_split(n: int, fraction: float) -> int:
    """Index where the holdout starts: the latest `fraction` of n time-ordered examples (at least one)."""
    return max(1, min(n - 1, n - int(math.ceil(n * fraction))))


def train_batch(spec: PipelineSpec, vectorizer: Vectorizer, X: np.ndarray, y: np.ndarray, t: np.ndarray,
                champion: Callable[[], tuple[str, Any]] | None) -> BatchResult:
    """Fit every scikit-learn candidate on the older part of the window and evaluate it, and the
    current champion (`champion()` gives its library and model), on the holdout.

    What does not depend on the candidates (the training data's reference statistics, loading and
    evaluating the champion) runs on a second thread meanwhile: a fit spends most of its time in
    compiled code that releases the GIL, so on a second core this work is hidden behind the fits."""
    cut = holdout_split(len(X), spec.training.holdout_fraction)
    task = spec.label.type
    classes = model_classes(spec)
    y_fit = _label_array(y[:cut], task)
    y_hold = _label_array(y[cut:], task)

    def champion_metrics() -> dict[str, float] | None:
        if champion is None:
            return None
        library, model = champion()
        rows = X[cut:] if library == "sklearn" else [_river_row(vectorizer, row) for row in X[cut:]]
        return holdout_metrics(spec, y_hold, predict(model, library, task, rows, classes))

    trained = []
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="retrain-side") as side:
        # the reference: the latest reference_size rows of the training part (the monitor's baseline)
        first = max(0, cut - spec.monitoring.data_drift.reference_size)
        data = side.submit(data_statistics, vectorizer, X[first:cut], y_fit[first:])
        against = side.submit(champion_metrics)
        for candidate in spec.models:
            if candidate.library != "sklearn":
                continue
            try:
                model = build_model(candidate, spec)
                model.fit(X[:cut], y_fit)
                predictions = predict(model, "sklearn", task, X[cut:], classes)
                metrics = holdout_metrics(spec, y_hold, predictions)
                reference = {**data.result(), **score_statistics(predictions)}
                trained.append(Trained(candidate, dump_model(model, "sklearn"), metrics, reference, cut,
                                       float(t[0]), float(t[cut - 1])))
            except Exception as exc:  # noqa: BLE001 - one candidate failing (e.g. one class only) rejects it alone
                trained.append(Trained(candidate, b"", {}, {}, cut, float(t[0]), float(t[cut - 1]),
                                       error=f"{type(exc).__name__}: {exc}"))
        champion_result = against.result()  # a champion that cannot be loaded fails the retrain
    return BatchResult(trained, champion_result, (len(X) - cut, float(t[cut]), float(t[-1])))


def _label_array(y: np.ndarray, task: str) -> np.ndarray:
    if task == "binary":
        return y.astype(np.int64)
    if task == "regression":
        return y.astype(np.float64)
    return y.astype(str)


def _river_row(vectorizer: Vectorizer, row: np.ndarray) -> dict[str, float]:
    """A matrix row as river_x gives it (missing numerics left out)."""
    return {c: float(v) for c, v in zip(vectorizer.columns, row) if v == v}


# ---------------------------------------------------------------- the gate

def gate(spec: PipelineSpec, trained: list[Trained], champion_metrics: dict[str, float] | None,
         champion: ModelVersion | None) -> list[tuple[Trained, str, str]]:
    """(candidate, stage, reason) for each: the best candidate that meets the minimum and beats the
    champion on the same holdout becomes champion; every other one is rejected with the reason."""
    primary, minimum = spec.metrics.primary, spec.metrics.minimum
    bound = "at most" if not _higher(spec) else "at least"
    scored = [t for t in trained if not t.error and primary in t.metrics]
    best = None
    if scored:
        key = (lambda t: t.metrics[primary]) if _higher(spec) else (lambda t: -t.metrics[primary])
        best = max(scored, key=key)
    out = []
    for t in trained:
        value = t.metrics.get(primary)
        if t.error:
            out.append((t, "rejected", f"training failed: {t.error}"))
        elif value is None:
            out.append((t, "rejected", f"{primary} could not be computed on the holdout"))
        elif not meets_minimum(spec, value):
            out.append((t, "rejected", f"{primary} {value:.4f} does not meet the spec's minimum "
                                       f"({bound} {minimum:g}) on the holdout"))
        elif t is not best:
            out.append((t, "rejected", f"{primary} {value:.4f} is behind the best candidate "
                                       f"{best.candidate.name} ({best.metrics[primary]:.4f}) on the same holdout"))
        elif champion is not None and champion_metrics is not None and primary in champion_metrics and not beats(
                spec, value, champion_metrics[primary]):
            out.append((t, "rejected", f"{primary} {value:.4f} does not beat the champion {champion.name} "
                                       f"v{champion.version} ({champion_metrics[primary]:.4f} on the same holdout) "
                                       f"by the margin {spec.metrics.margin:g}"))
        else:
            against = "no champion yet" if champion is None else (
                f"beats the champion {champion.name} v{champion.version} "
                f"({(champion_metrics or {}).get(primary, float('nan')):.4f}) by the margin {spec.metrics.margin:g}")
            out.append((t, "champion", f"{primary} {value:.4f} meets the minimum; {against}"))
    return out


def _higher(spec: PipelineSpec) -> bool:
    return spec.higher_is_better


# ---------------------------------------------------------------- registry records

@dataclass
class Publisher:
    """Builds registry records: writes each artifact completely, then the record that points at it."""

    spec: PipelineSpec
    store: ArtifactStore
    key: bytes | None = None
    crash_after_artifact: bool = False  # fault injection (tests): die between artifact and record
    topic: str | None = None

    def version(self, registry: Registry, candidate: ModelCandidate, artifact: bytes, *, stage: str,
                metrics: dict[str, float], evaluation: str, data: DataRange, reference: dict[str, Any],
                classes: list[str] | None, inputs: list[str], reason: str = "") -> ModelVersion:
        number = registry.next_version(candidate.name)
        uri = self.store.put(artifact_key(self.spec.name, candidate.name, number, candidate.library), artifact)
        if self.crash_after_artifact:
            import os
            os._exit(17)  # the artifact is written, its record never will be
        now = now_utc()
        return ModelVersion(
            name=candidate.name, version=number, stage=stage, library=candidate.library,
            algorithm=candidate.algorithm, task=self.spec.label.type, artifact_uri=uri, sha256=digest(artifact),
            signature=sign(artifact, self.key) if self.key else None, metrics=metrics, evaluation=evaluation,
            trained_at=now, updated_at=now, params=constructor_params(candidate, self.spec), inputs=inputs,
            classes=classes,
            lineage=Lineage(feature_hash=self.spec.feature_hash(), spec_name=self.spec.name, data=data,
                            code_version=code_version(), packages=package_versions()),
            reference=reference, reason=reason)


def restage(version: ModelVersion, stage: str, reason: str) -> ModelVersion:
    """The same version in another stage (a new record for the same key)."""
    return version.staged(stage, at=now_utc(), reason=reason)


def promotion(registry: Registry, version: ModelVersion, reason: str) -> list[ModelVersion]:
    """Records that make `version` the champion and archive the current one (if another)."""
    out = []
    current = registry.champion()
    if current is not None and (current.name, current.version) != (version.name, version.version):
        out.append(restage(current, "archived", f"replaced by {version.name} v{version.version}"))
    out.append(restage(version, "champion", reason))
    return out


def rollback_target(registry: Registry) -> ModelVersion | None:
    """The champion before the current one: the most recently archived version that was replaced."""
    archived = [v for v in registry.versions() if v.stage == "archived" and v.reason.startswith("replaced by")]
    return max(archived, key=lambda v: v.updated_at, default=None)


def prunable(registry: Registry, keep: int) -> list[ModelVersion]:
    """Versions beyond the newest `keep` of each model, never the champion or a challenger/shadow."""
    out = []
    names = {v.name for v in registry.versions()}
    for name in names:
        versions = [v for v in registry.versions(name) if v.stage in ("candidate", "rejected", "archived")]
        out += versions[:-keep] if len(versions) > keep else []
    return out


def data_range(topic: str | None, offsets: dict[int, list[int]] | None, start: float | None, end: float | None,
               examples: int) -> DataRange:
    def ts(x: float | None) -> datetime | None:
        return None if x is None else datetime.fromtimestamp(x, timezone.utc)
    return DataRange(topic=topic, offsets={str(p): list(r) for p, r in (offsets or {}).items()} or None,
                     start=ts(start), end=ts(end), examples=examples)


def labels_of(examples: Iterable[Example]) -> list[Any]:
    return [e.label for e in examples]
