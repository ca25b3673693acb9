"""The trainer's service layer: what the stream handlers, the HTTP routes and the background tasks
call. It owns the in-memory registry (kept in step with the `models` topic), the online models,
the training window and the retrain triggers, and publishes every registry change through the
stream runtime's producer."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from threadpoolctl import threadpool_limits

from services.trainer.config import TrainerSettings
from services.trainer.domain import (
    DRIFT_KINDS, Example, ExampleWindow, OnlineArtifact, OnlineTrainer, Publisher, data_range, gate, promotion,
    prunable, restage, rollback_target, train_batch,
)
from services.trainer.metrics import TrainerMetrics
from shared.events import ModelVersion
from shared.kafka import OutRecord
from shared.modeling import Vectorizer, meets_minimum, model_classes
from shared.registry import ArtifactStore, Registry, dump_model, load_model
from shared.serialization import to_utc
from shared.spec import PipelineSpec
from shared.topics import Topics

log = logging.getLogger(__name__)


@dataclass
class Triggers:
    """When the batch candidates are retrained: every N labels, on a schedule, on a drift alert,
    on request, and once when the window first holds min_examples (there is no champion yet)."""

    every_n_labels: int | None
    schedule_s: float | None
    on_drift: bool
    labels_since: int = 0
    last_retrain: float = field(default_factory=time.monotonic)
    requested: list[str] = field(default_factory=list)  # trigger names waiting
    fired_alerts: set[str] = field(default_factory=set)

    def due(self) -> str | None:
        if self.requested:
            return self.requested[0]
        if self.every_n_labels and self.labels_since >= self.every_n_labels:
            return "labels"
        if self.schedule_s and time.monotonic() - self.last_retrain >= self.schedule_s:
            return "schedule"
        return None

    def done(self) -> None:
        self.labels_since = 0
        self.last_retrain = time.monotonic()
        self.requested.clear()


class Trainer:
    def __init__(self, spec: PipelineSpec, settings: TrainerSettings, registry: Registry, metrics: TrainerMetrics):
        self.spec, self.settings, self.registry, self.metrics = spec, settings, registry, metrics
        self.topics = Topics(settings.topic_prefix)
        self.vectorizer = Vectorizer(spec)
        self.store = ArtifactStore(settings.artifact_url)
        self.key = settings.signing_key.get_secret_value().encode() if settings.signing_key else None
        self.publisher = Publisher(spec, self.store, self.key, settings.crash_after_artifact)
        self.online = OnlineTrainer(spec, self.vectorizer)
        self.online.restore(registry, self.store, self.key)
        #: whether the spec has batch (scikit-learn) candidates: without, no window is kept or filled
        self.batch = any(c.library == "sklearn" for c in spec.models)
        self.window = ExampleWindow(spec, self.vectorizer, spec.training.max_examples if self.batch else 0)
        self._batch_fitted = False  # a batch version is in the registry (then there is no first fit to do)
        # A batch's offsets wait for the checkpoint covering it, and the runtime delivers nothing past
        # max_in_flight_records unacked records: a checkpoint is forced once the held records reach
        # half that bound (the other half keeps the stream going while the checkpoint is acknowledged),
        # whatever publish_every_examples says; otherwise the stream would stop until one fell due by time.
        self.hold_limit = max(1, settings.max_in_flight_records // 2)
        self._held = 0  # records of the batches waiting for the next checkpoint
        t = spec.training.triggers
        self.triggers = Triggers(t.every_n_labels, t.schedule.total_seconds() if t.schedule else None, t.on_drift)
        self.retrain_wanted = asyncio.Event()
        self._segment: asyncio.Future[Any] | None = None  # resolved when the next checkpoint is acknowledged
        self.retraining = False
        self.last_retrain_error = ""

    # ------------------------------------------------------------------ examples (stream handler)

    def take(self, partition: int, offset: int, example: Example) -> bool:
        """One example: learned by the online models unless a checkpoint already covers it; kept in the
        window (with batch candidates); counted for the label trigger. False if it was skipped. The
        caller counts the outcomes in the metrics and checks the retrain triggers once per batch
        (`check_triggers`)."""
        if self.online.learned(partition, offset):
            return False
        self.add(partition, offset, example)
        return True

    def add(self, partition: int, offset: int, example: Example) -> None:
        """`take` for an example the caller has found not yet learned (`online.learned`)."""
        self.add_one(example)
        self.added_run(partition, offset, offset, 1)

    def add_one(self, example: Example) -> None:
        """The stream handler's per-example half of `add` (learned and kept as soon as decoded, while the
        example is fresh in the cache); `added_run` then does the bookkeeping once per partition and batch."""
        if self.online.active:
            self.online.learn_one(example)
        if self.batch:
            self.window.add(example)

    def added_run(self, partition: int, first: int, last: int, n: int) -> None:
        """`n` examples of a partition, read from offsets `first`..`last`, went through `add_one`."""
        if self.online.active:
            self.online.learned_run(partition, first, last, n)
        self.triggers.labels_since += n

    def check_triggers(self) -> None:
        """Wake the retrain task if a trigger is due or the first fit is (after a batch of examples)."""
        if self.batch and (self.triggers.due() or self.first_fit_due()):
            self.retrain_wanted.set()

    def first_fit_due(self) -> bool:
        """No batch candidate has been fitted yet and the window holds enough examples."""
        if not self.batch or self.retraining or len(self.window) < self.spec.training.min_examples:
            return False
        if not self._batch_fitted:  # once a batch version exists, one always will (pruning keeps the newest)
            self._batch_fitted = any(v.library == "sklearn" for v in self.registry.versions())
        return not self._batch_fitted

    def segment(self, records: int = 0) -> asyncio.Future[Any] | None:
        """What the current batch (of `records` records) must wait for before its offsets may be
        committed: the checkpoint that will cover it (None without online models: nothing to wait for)."""
        if not self.online.active or self.online.pending == 0:
            return None
        if self._segment is None:
            self._segment = asyncio.get_running_loop().create_future()
        self._held += records
        return self._segment

    def checkpoint_records(self) -> tuple[list[OutRecord], asyncio.Future[Any] | None]:
        """If a checkpoint is due (every N examples or T seconds, or when the batches waiting for it
        reach `hold_limit` records): a version of every online model (artifacts written first) and the
        future it resolves once acknowledged."""
        s = self.settings
        if not self.online.active or not (self._held >= self.hold_limit or self.online.due(
                s.publish_every_examples, s.publish_every_s)):
            return [], None
        return self._checkpoint()

    def _checkpoint(self) -> tuple[list[OutRecord], asyncio.Future[Any] | None]:
        records: list[ModelVersion] = []
        primary = self.spec.metrics.primary
        for name, online in self.online.models.items():
            artifact = dump_model(OnlineArtifact(online.model, online.metrics, online.examples), "river")
            values = online.metrics.values()
            stage, reason = self._online_stage(name, values.get(primary), online.examples)
            version = self.publisher.version(
                self.registry, online.candidate, artifact, stage="candidate", metrics=values,
                evaluation="prequential", data=data_range(self.topics["training-examples"], self.online.offsets,
                                                          None, None, online.examples),
                reference={}, classes=model_classes(self.spec), inputs=self.vectorizer.columns, reason=reason)
            records += self._stage(version, stage, reason)
            for metric, value in values.items():
                self.metrics.prequential.labels(name, metric).set(value)
        self.online.pending, self._held = 0, 0
        self.online.last_checkpoint = time.monotonic()
        segment, self._segment = self._segment, None
        return self._records(records), segment

    def _online_stage(self, name: str, value: float | None, examples: int) -> tuple[str, str]:
        champion = self.registry.champion()
        primary = self.spec.metrics.primary
        meets = value is not None and meets_minimum(self.spec, value)
        if champion is not None and champion.name == name:
            if meets:
                return "champion", "online update of the champion"
            return "candidate", f"prequential {primary} {value} no longer meets the minimum: the previous version stays"
        if champion is None and meets and examples >= self.spec.training.min_examples:
            return "champion", f"prequential {primary} {value:.4f} meets the minimum; no champion yet"
        return "candidate", f"prequential {primary} {value}"

    def _stage(self, version: ModelVersion, stage: str, reason: str) -> list[ModelVersion]:
        """Records for a new version in `stage` (a champion archives the previous one), applied to the
        in-memory registry at once so that version numbers and stages stay consistent."""
        records = promotion(self.registry, version, reason) if stage == "champion" else [
            restage(version, stage, reason)]
        for r in records:
            self.registry.apply(r)
            self.metrics.published.labels(r.library, r.stage).inc()
            if r.stage == "champion":
                self.metrics.champion_version.labels(r.name).set(r.version)
        return records

    def _records(self, versions: list[ModelVersion]) -> list[OutRecord]:
        out = [OutRecord(self.topics["models"], f"{v.name}:{v.version}".encode(), v.model_dump_json().encode())
               for v in versions]
        for old in prunable(self.registry, self.settings.keep_versions):
            out.append(OutRecord(self.topics["models"], f"{old.name}:{old.version}".encode(), None))
            self.registry.forget(old.name, old.version)
            self.store.delete(old.artifact_uri)
        return out

    # ------------------------------------------------------------------ alerts (stream handler)

    def alert(self, alert: dict[str, Any]) -> None:
        """A firing drift or performance alert triggers a retrain (once per alert fingerprint)."""
        if not self.triggers.on_drift or alert.get("status") != "firing" or alert.get("kind") not in DRIFT_KINDS:
            return
        fingerprint = str(alert.get("fingerprint"))
        if fingerprint in self.triggers.fired_alerts:
            return
        self.triggers.fired_alerts.add(fingerprint)
        self.request("drift")

    def retrained_since(self, when: datetime) -> bool:
        """Whether a batch candidate was trained after `when`."""
        return any(v.library == "sklearn" and to_utc(v.trained_at) > to_utc(when) for v in self.registry.versions())

    def request(self, trigger: str) -> None:
        self.triggers.requested.append(trigger)
        self.retrain_wanted.set()

    # ------------------------------------------------------------------ batch retrain (background task)

    async def retrain_loop(self, emit: Any) -> None:
        """Wait for a trigger, retrain off the event loop, publish; forever."""
        while True:
            await self.retrain_wanted.wait()
            self.retrain_wanted.clear()
            trigger = self.triggers.due() or ("initial" if self.first_fit_due() else None)
            if trigger is None or len(self.window) < self.spec.training.min_examples:
                continue
            await self.retrain(trigger, emit)

    async def retrain(self, trigger: str, emit: Any) -> list[ModelVersion]:
        """Fit, evaluate and gate every batch candidate on the current window; publish the results."""
        if not self.batch:
            self.triggers.done()
            return []
        self.retraining = True
        started = time.monotonic()
        try:
            X, y, t = self.window.snapshot()
            champion = self.registry.champion()
            load = None if champion is None else (lambda: self._load(champion))
            result = await in_thread(limited(train_batch, self.settings.fit_threads), self.spec, self.vectorizer,
                                     X, y, t, load)
            versions: list[ModelVersion] = []
            for trained, stage, reason in gate(self.spec, result.trained, result.champion_metrics, champion):
                if not trained.artifact:
                    log.warning("candidate failed", extra={"model": trained.candidate.name, "reason": reason})
                    continue
                version = self.publisher.version(
                    self.registry, trained.candidate, trained.artifact, stage="candidate", metrics=trained.metrics,
                    evaluation="holdout", data=data_range(None, None, trained.start, trained.end, trained.examples),
                    reference=trained.reference, classes=model_classes(self.spec), inputs=self.vectorizer.columns,
                    reason=reason)
                versions += self._stage(version, stage, reason)
            await emit(self._records(versions))
            self.triggers.done()
            self.metrics.retrains.labels(trigger, "published").inc()
            self.last_retrain_error = ""
            return versions
        except Exception as exc:
            self.metrics.retrains.labels(trigger, "failed").inc()
            self.last_retrain_error = f"{type(exc).__name__}: {exc}"
            log.exception("retrain failed", extra={"trigger": trigger})
            self.triggers.done()
            return []
        finally:
            self.retraining = False
            self.metrics.retrain_seconds.observe(time.monotonic() - started)
            self.metrics.window_examples.set(len(self.window))

    def _load(self, version: ModelVersion) -> tuple[str, Any]:
        """(library, model) of a registry version, its artifact verified first (train_batch calls it
        on its second thread, during the fits)."""
        model = load_model(self.store.get(version.artifact_uri), version.library, sha256=version.sha256,
                           signature=version.signature, key=self.key)
        return version.library, model.model if isinstance(model, OnlineArtifact) else model

    # ------------------------------------------------------------------ operator actions (HTTP)

    def promote(self, name: str, version: int) -> list[OutRecord]:
        target = self.registry.get(name, version)
        if target is None:
            raise KeyError(f"{name} v{version} is not in the registry")
        return self._records(self._stage(target, "champion", "promoted by an operator"))

    def restage(self, name: str, version: int, stage: str) -> list[OutRecord]:
        """Put a version in stage challenger, shadow or archived (never the champion: promote or roll back)."""
        target = self.registry.get(name, version)
        if target is None:
            raise KeyError(f"{name} v{version} is not in the registry")
        if target.stage == "champion":
            raise ValueError(f"{name} v{version} is the champion: promote another version or roll back first")
        return self._records(self._stage(target, stage, f"{stage} by an operator"))

    def rollback(self) -> list[OutRecord]:
        target = rollback_target(self.registry)
        if target is None:
            raise KeyError("no earlier champion to roll back to")
        current = self.registry.champion()
        records = [restage(current, "archived", f"rolled back to {target.name} v{target.version}")] if current else []
        records.append(restage(target, "champion", "rollback by an operator"))
        for r in records:
            self.registry.apply(r)
        return self._records(records)


def limited(fn: Callable[..., Any], threads: int) -> Callable[..., Any]:
    """`fn` run with at most `threads` native (OpenMP, BLAS) threads, set in the thread that runs it."""
    def run(*args: Any) -> Any:
        with threadpool_limits(limits=threads):
            return fn(*args)
    return run


def in_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Run fn(*args) on a daemon thread; the future resolves on the calling loop. A daemon thread, not
    an executor's: a stop does not wait for a fit in progress (the retrain is simply lost)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(outcome: Any, failed: bool) -> None:
        if future.done():  # cancelled meanwhile
            return
        if failed:
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def run() -> None:
        try:
            outcome, failed = fn(*args), False
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome, failed = exc, True
        try:
            loop.call_soon_threadsafe(settle, outcome, failed)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    threading.Thread(target=run, name="retrain", daemon=True).start()
    return future
