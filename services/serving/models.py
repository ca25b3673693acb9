"""The model versions serving has loaded, and how they change: follow the registry, load a new
version off the request path (download, verify digest and signature, deserialize, compile the fast
scorer, warm it up), then swap it in with one assignment. A request takes the `Deployment` once and
uses it to the end, so no request ever sees half a swap; a version that fails anywhere is refused
(counted and logged) and the loaded one keeps serving."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from services.serving.metrics import ServingMetrics
from shared.errors import ArtifactRejected
from shared.events import ModelVersion
from shared.registry import ArtifactStore, Registry, load_model
from shared.scoring import Scorer, compile_scorer, warm_up
from shared.spec import PipelineSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    version: ModelVersion
    scorer: Scorer
    loaded_at: datetime

    @property
    def key(self) -> tuple[str, int]:
        return self.version.name, self.version.version


@dataclass(frozen=True)
class Deployment:
    """What answers requests: the champion, the challenger (the canary share of entities) and the
    shadows (score every request, logged only)."""

    champion: Loaded | None = None
    challenger: Loaded | None = None
    shadows: tuple[Loaded, ...] = ()

    def loaded(self) -> dict[tuple[str, int], Loaded]:
        out = {x.key: x for x in (self.champion, self.challenger, *self.shadows) if x is not None}
        return out


@dataclass
class Models:
    spec: PipelineSpec
    store: ArtifactStore
    key: bytes | None
    metrics: ServingMetrics
    deployment: Deployment = field(default_factory=Deployment)
    refused: dict[tuple[str, int], str] = field(default_factory=dict)  # version -> why (not retried)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _wanted: asyncio.Event = field(default_factory=asyncio.Event)

    def wanted(self) -> None:
        """The registry changed: reconcile soon (changes coalesce)."""
        self._wanted.set()

    async def follow(self, registry: Registry) -> None:
        """Reconcile with the registry whenever it changes, forever."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self.reconcile(registry)

    async def reconcile(self, registry: Registry) -> None:
        """Load what the registry says should serve and swap it in."""
        async with self._lock:
            champion = registry.champion()
            challengers = registry.in_stage("challenger")
            wanted = {
                "champion": [champion] if champion is not None else [],
                "challenger": challengers[-1:],  # the newest challenger
                "shadow": registry.in_stage("shadow"),
            }
            current = self.deployment.loaded()
            picked: dict[str, list[Loaded]] = {}
            for role, versions in wanted.items():
                picked[role] = []
                for v in versions:
                    have = current.get((v.name, v.version))
                    loaded = have if have is not None else await self._load(v, role)
                    if loaded is not None:
                        picked[role].append(loaded)
            old = self.deployment
            new = Deployment(
                # a refused champion leaves the previous one serving
                champion=picked["champion"][0] if picked["champion"] else (old.champion if champion else None),
                challenger=picked["challenger"][0] if picked["challenger"] else None,
                shadows=tuple(picked["shadow"]))
            self.deployment = new  # the swap: one assignment
            for role, loaded in (("champion", new.champion), ("challenger", new.challenger)):
                before = getattr(old, role)
                if loaded is not None and (before is None or before.key != loaded.key):
                    self.metrics.swaps.labels(role).inc()
                    self.metrics.loaded_version.labels(role).set(loaded.version.version)
                    log.info("version swapped in", extra={"role": role, "model": loaded.version.name,
                                                          "version": loaded.version.version})
            for s in new.shadows:
                if s.key not in {x.key for x in old.shadows}:
                    self.metrics.swaps.labels("shadow").inc()

    async def _load(self, version: ModelVersion, role: str) -> Loaded | None:
        key = (version.name, version.version)
        if key in self.refused:
            return None
        try:
            scorer = await asyncio.to_thread(self._prepare, version)
            warm_up(scorer, self.spec)  # in the thread that scores with it (thread limits are per thread)
        except ArtifactRejected as exc:
            return self._refuse(key, "verification", f"{exc}", role)
        except Exception as exc:  # noqa: BLE001 - a version that cannot be loaded must not stop serving
            reason = "compile" if isinstance(exc, (TypeError, ValueError, NotImplementedError)) else "load"
            return self._refuse(key, reason, f"{type(exc).__name__}: {exc}", role)
        return Loaded(version, scorer, datetime.now(timezone.utc))

    def _prepare(self, version: ModelVersion) -> Scorer:
        """Off the event loop: download, verify, deserialize, compile."""
        data = self.store.get(version.artifact_uri)
        model = load_model(data, version.library, sha256=version.sha256, signature=version.signature, key=self.key)
        return compile_scorer(model, version, self.spec)

    def _refuse(self, key: tuple[str, int], reason: str, detail: str, role: str) -> None:
        self.refused[key] = detail
        self.metrics.refused.labels(reason).inc()
        log.error("version refused; the loaded one keeps serving",
                  extra={"model": key[0], "version": key[1], "role": role, "reason": detail})
        return None

    def describe(self) -> dict[str, Any]:
        d = self.deployment

        def one(x: Loaded | None) -> dict[str, Any] | None:
            return None if x is None else {"name": x.version.name, "version": x.version.version,
                                           "library": x.version.library, "algorithm": x.version.algorithm,
                                           "loaded_at": x.loaded_at, "metrics": x.version.metrics}
        return {"champion": one(d.champion), "challenger": one(d.challenger),
                "shadows": [one(s) for s in d.shadows],
                "refused": [{"name": n, "version": v, "reason": r} for (n, v), r in self.refused.items()]}
