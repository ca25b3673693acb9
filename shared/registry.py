"""The model registry: its state rebuilt from the `models` topic, the artifact store, and the
integrity checks that come before any artifact is deserialized.

Order of work when publishing a version (the trainer's job): `dump_model` -> `digest`/`sign` ->
`ArtifactStore.put` (complete, atomic) -> publish the `ModelVersion` record. A crash before the
record leaves at most an unreferenced file; never a record pointing at a missing or partial one.
Loading is the reverse: `ArtifactStore.get` -> `load_model`, which verifies before deserializing.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import hmac
import os
import pickle
import platform
import subprocess
import tomllib
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from aiokafka import TopicPartition

from shared.errors import ArtifactRejected
from shared.events import ModelVersion
from shared.kafka import make_consumer, partitions_of, read_to_end
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)

__all__ = ["ArtifactStore", "Registry", "apply_record", "artifact_key", "code_version", "digest", "dump_model",
           "follow_registry", "load_model", "package_versions", "read_registry", "sign", "verify"]

_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- registry state

class Registry:
    """The state of the `models` topic: the latest record per (name, version), applied in log order."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, int], ModelVersion] = {}

    def apply(self, version: ModelVersion) -> None:
        """Apply the next record of the log: it replaces any earlier record of the same version."""
        self._versions[(version.name, version.version)] = version

    def forget(self, name: str, version: int) -> None:
        """Apply a tombstone (a null record) for the key '<name>:<version>'."""
        self._versions.pop((name, version), None)

    def get(self, name: str, version: int) -> ModelVersion | None:
        """The current record of a version, or None."""
        return self._versions.get((name, version))

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version (of one candidate name, if given), ordered by name then version."""
        return [self._versions[k] for k in sorted(self._versions) if name is None or k[0] == name]

    def latest(self, name: str) -> ModelVersion | None:
        """The highest version of a candidate name, or None."""
        found = self.versions(name)
        return found[-1] if found else None

    def champion(self) -> ModelVersion | None:
        """The version whose stage is champion; if several claim it (a promotion published before the
        old champion's archive record), the one with the latest updated_at (then the highest version)."""
        champions = [v for v in self._versions.values() if v.stage == "champion"]
        return max(champions, key=lambda v: (v.updated_at, v.version, v.name), default=None)

    def in_stage(self, stage: str) -> list[ModelVersion]:
        """The versions in a stage, ordered by name then version."""
        return [v for v in self.versions() if v.stage == stage]

    def next_version(self, name: str) -> int:
        """The version number the next model of this candidate name gets."""
        latest = self.latest(name)
        return latest.version + 1 if latest else 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view for the API: the champion's key and every version's record."""
        champion = self.champion()
        return {"champion": champion.key if champion else None,
                "versions": [v.model_dump(mode="json") for v in self.versions()]}

    def __len__(self) -> int:
        return len(self._versions)


# ---------------------------------------------------------------- artifact store

_EXTENSIONS = {"sklearn": "skops", "river": "pkl"}


def artifact_key(spec_name: str, model_name: str, version: int, library: str) -> str:
    """The store key of an artifact: '<spec>/<model>/<version>.skops' (sklearn) or '.pkl' (river)."""
    return f"{spec_name}/{model_name}/{version}.{_EXTENSIONS[library]}"


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _local_path(url: str) -> Path:
    return Path(unquote(urlparse(url).path) if url.startswith("file://") else url).resolve()


class ArtifactStore:
    """Model artifacts under a base URL: a local directory (a path or file://) or any fsspec URL
    (s3://bucket/prefix, gs://..., memory://...; the backend's package must be installed).

    `put` never leaves a partial file under the final key: locally it writes a temporary file in the
    same directory, fsyncs it and renames it into place (atomic on POSIX); elsewhere it uploads with
    fsspec's `pipe_file`, which on object stores creates the object only once the upload is complete
    (a backend without that property, e.g. sftp, does not get the guarantee)."""

    def __init__(self, url: str):
        self.local = _is_local(url)
        if self.local:
            self.root = _local_path(url)
            self.url = self.root.as_uri()
            self.fs = None
        else:
            import fsspec

            self.url = url.rstrip("/")
            self.fs, self.root_path = fsspec.core.url_to_fs(self.url)

    def _check_key(self, key: str) -> None:
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"artifact key {key!r} must be a relative path without '.' or '..' parts")

    def uri(self, key: str) -> str:
        """The URI of a key in this store."""
        self._check_key(key)
        return f"{self.url}/{key}"

    def put(self, key: str, data: bytes) -> str:
        """Write an artifact completely under `key` (replacing any earlier one); return its URI."""
        uri = self.uri(key)
        if self.local:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(path.parent)  # the rename itself survives a power loss
        else:
            path = f"{self.root_path}/{key}"
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(path, data)
        return uri

    def get(self, uri: str) -> bytes:
        """The bytes of an artifact of this store. A URI outside the store raises ArtifactRejected:
        a record cannot send a service to read arbitrary files."""
        if not uri.startswith(self.url + "/"):
            raise ArtifactRejected(f"artifact {uri!r} is not in the artifact store {self.url!r}")
        key = uri[len(self.url) + 1:]
        try:
            self._check_key(key)
        except ValueError as exc:
            raise ArtifactRejected(str(exc)) from None
        if self.local:
            return (self.root / key).read_bytes()
        return self.fs.cat_file(f"{self.root_path}/{key}")


    def delete(self, uri: str) -> None:
        """Remove an artifact (a version deleted from the registry); a missing one is fine."""
        if not uri.startswith(self.url + "/"):
            raise ArtifactRejected(f"artifact {uri!r} is not in the artifact store {self.url!r}")
        key = uri[len(self.url) + 1:]
        self._check_key(key)
        if self.local:
            (self.root / key).unlink(missing_ok=True)
        elif self.fs.exists(f"{self.root_path}/{key}"):
            self.fs.rm_file(f"{self.root_path}/{key}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- integrity

def digest(data: bytes) -> str:
    """sha256 hex digest of artifact bytes."""
    return hashlib.sha256(data).hexdigest()


def sign(data: bytes, key: bytes) -> str:
    """HMAC-SHA256 hex of artifact bytes under the signing key."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _same(expected: str, given: str) -> bool:
    # Constant-time; as bytes because compare_digest raises TypeError on non-ASCII text.
    return hmac.compare_digest(expected.encode(), given.lower().encode())


def verify(data: bytes, sha256: str, signature: str | None, key: bytes | None) -> None:
    """Raise ArtifactRejected unless the bytes match the digest and, when a signing key is configured,
    carry a valid signature. (Without a key a signature cannot be checked and is ignored.)"""
    if not _same(digest(data), sha256):
        raise ArtifactRejected("artifact digest does not match its record's sha256 (corrupt or tampered)")
    if key is None:
        return
    if not signature:
        raise ArtifactRejected("artifact is unsigned but a signing key is configured")
    if not _same(sign(data, key), signature):
        raise ArtifactRejected("artifact signature is not valid under the configured signing key")


def dump_model(model: Any, library: str) -> bytes:
    """Serialize a model: scikit-learn with skops (no pickle), river with pickle (protocol 5)."""
    if library == "sklearn":
        import skops.io

        return skops.io.dumps(model)
    if library == "river":
        return pickle.dumps(model, protocol=5)
    raise ValueError(f"unknown library {library!r}")


def load_model(data: bytes, library: str, *, sha256: str, signature: str | None, key: bytes | None) -> Any:
    """Deserialize an artifact, only after `verify` has accepted it (raises ArtifactRejected otherwise).

    river models can only be pickled, and unpickling runs arbitrary code: the digest (and the
    signature, with a key) is what makes loading them acceptable. skops loads scikit-learn models
    without pickle but refuses types it does not know (e.g. sklearn's tree internals); those
    reported by `skops.io.get_untrusted_types` are trusted here, which is acceptable only because
    the bytes were verified as the ones the trainer wrote. Configure a signing key in production:
    a digest alone proves only that the file matches its record, not who wrote the record."""
    verify(data, sha256, signature, key)
    if library == "sklearn":
        import skops.io

        return skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
    if library == "river":
        return pickle.loads(data)
    raise ValueError(f"unknown library {library!r}")


# ---------------------------------------------------------------- lineage

def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _loopline_version() -> str:
    # Run from a checkout (not installed as a distribution): the version pyproject.toml declares.
    if found := _version("loopline"):
        return found
    try:
        return tomllib.loads((_ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def package_versions() -> dict[str, str]:
    """Versions of python and the packages that train and load models (lineage of each version)."""
    return dict(_package_versions())


@functools.cache
def _package_versions() -> tuple[tuple[str, str], ...]:  # worked out once: ~1 ms of metadata reads a call
    out = {"python": platform.python_version()}
    for dist in ("scikit-learn", "river", "numpy", "skops"):
        out[dist] = _version(dist) or "missing"
    out["loopline"] = _loopline_version()
    return tuple(out.items())


@functools.cache
def code_version() -> str:
    """The code version recorded in lineage, worked out once: LOOPLINE_CODE_VERSION (set it when
    building an image, which has no .git), else the checkout's short git commit (with '-dirty' when
    tracked files differ from it), else the loopline package version."""
    if env := os.environ.get("LOOPLINE_CODE_VERSION"):
        return env
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=_ROOT, capture_output=True,
                               timeout=10).returncode == 1
        if commit:
            return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return _loopline_version()


# ---------------------------------------------------------------- the registry's log on Kafka

def apply_record(registry: Registry, key: bytes | None, value: bytes | None) -> None:
    """Apply one record of the `models` topic: a version, or a tombstone for '<name>:<version>'."""
    if value is None:
        if key:
            name, _, number = key.decode(errors="replace").rpartition(":")
            if number.isdigit():
                registry.forget(name, int(number))
        return
    try:
        registry.apply(ModelVersion.model_validate_json(value))
    except ValueError:
        log.warning("a record on the models topic is not a ModelVersion; ignored", extra={"key": key})


async def read_registry(kafka: KafkaSettings, topic: str) -> tuple[Registry, dict[int, int]]:
    """The registry as the `models` topic has it now (every record up to the end offsets at the
    call), and those end offsets per partition (where `follow_registry` goes on)."""
    registry = Registry()
    ends = await read_to_end(kafka, topic, lambda r: apply_record(registry, r.key, r.value))
    return registry, ends


async def follow_registry(kafka: KafkaSettings, topic: str, registry: Registry, offsets: dict[int, int],
                          on_change: Any = None) -> None:
    """Keep applying the `models` topic's new records to `registry` from `offsets` on, forever
    (cancel the task to stop). `on_change(registry)` runs after each fetch that changed something."""
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, offsets.get(tp.partition, 0))
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for r in records:
                    apply_record(registry, r.key, r.value)
            if batch and on_change is not None:
                on_change(registry)
    finally:
        await consumer.stop()
