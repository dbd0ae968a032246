"""The model registry: immutable, atomically published model versions on any object store.

Layout (the same on a local directory and on ``s3://bucket/prefix``)::

    <model>/versions/v<N>/CLAIM            who is publishing v<N> (written first)
    <model>/versions/v<N>/<file>           model.pt, model.json, preprocessing.json,
                                           schema.json, metrics.json, lineage.json,
                                           reference.parquet, ...
    <model>/versions/v<N>/MANIFEST.json    written last: file sizes and sha256, the
                                           version checksum, metrics, lineage, gate
    <model>/aliases/<alias>.json           e.g. champion -> v<N>

A version exists only once its ``MANIFEST.json`` does: publishing uploads every file
first and the manifest last (an atomic put), so a crash mid-way leaves no visible
partial version. Versions are never overwritten; readers verify each file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubeloop.registry.stores import ObjectStore, RegistryError, open_store

MANIFEST = "MANIFEST.json"
# every version's labelled sample of its data: the drift reference and the replay source
REFERENCE_FILE = "reference.parquet"
CLAIM = "CLAIM"
_VERSION_RE = re.compile(r"^v(\d+)$")
_MAX_CLAIM_TRIES = 50


class VersionNotFound(RegistryError):
    """The requested model version (or alias) does not exist."""


class ChecksumMismatch(RegistryError):
    """A stored file does not match the sha256 recorded in its version's manifest."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def version_checksum(files: dict[str, dict[str, Any]]) -> str:
    """One digest over every file's name and sha256 (order-independent)."""
    lines = "".join(f"{name}:{meta['sha256']}\n" for name, meta in sorted(files.items()))
    return sha256_bytes(lines.encode())


_PASSING = ("pass", "passed", "true", "yes", "1")


def gate_passed(gate: dict[str, Any]) -> bool:
    """Whether a version passed its gate: the one rule everything that reads ``gate.json`` uses.

    ``passed`` decides when present (a bool, or its text form); otherwise ``decision``
    (``passed``/``failed``, as the gate stage writes it). A version published without
    a gate record passed: publishing it was the decision (quick training, hand uploads).
    """
    value = gate.get("passed", gate.get("decision", True))
    if isinstance(value, str):
        return value.strip().lower() in _PASSING
    return bool(value)


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: str
    created_at: str
    checksum: str
    files: dict[str, dict[str, Any]]
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    uri: str = ""

    @property
    def number(self) -> int:
        return int(self.version[1:])

    @property
    def gate_passed(self) -> bool:
        return gate_passed(self.gate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelRegistry:
    def __init__(self, uri: str | None = None, store: ObjectStore | None = None) -> None:
        if store is None:
            if uri is None:
                from kubeloop.settings import get_settings

                uri = get_settings().registry_uri
            store = open_store(uri)
        self.store = store
        self.uri = store.uri

    # --- reading ----------------------------------------------------------------------
    def _version_numbers(self, model: str, *, claimed: bool) -> list[int]:
        marker = CLAIM if claimed else MANIFEST
        numbers = set()
        for key in self.store.list(f"{model}/versions"):
            parts = key.split("/")
            if len(parts) == 4 and parts[3] == marker and (m := _VERSION_RE.match(parts[2])):
                numbers.add(int(m.group(1)))
        return sorted(numbers)

    def list_versions(self, model: str) -> list[ModelVersion]:
        return [
            self._read_manifest(model, f"v{n}") for n in self._version_numbers(model, claimed=False)
        ]

    def _read_manifest(self, model: str, version: str) -> ModelVersion:
        key = f"{model}/versions/{version}/{MANIFEST}"
        if not self.store.exists(key):
            raise VersionNotFound(f"model {model!r} has no version {version!r} in {self.uri}")
        data = json.loads(self.store.get(key))
        return ModelVersion(**data, uri=f"{self.uri}/{model}/versions/{version}")

    def resolve(self, model: str, ref: str = "latest") -> str:
        """Turns ``latest``, an alias (``champion``) or ``v<N>``/``<N>`` into a version name."""
        if ref == "latest":
            numbers = self._version_numbers(model, claimed=False)
            if not numbers:
                raise VersionNotFound(f"model {model!r} has no versions in {self.uri}")
            return f"v{numbers[-1]}"
        if ref.isdigit():
            return f"v{int(ref)}"
        if _VERSION_RE.match(ref):
            return ref
        alias = self.get_alias(model, ref)
        if alias is None:
            raise VersionNotFound(f"model {model!r} has no version or alias {ref!r} in {self.uri}")
        return alias

    def get(self, model: str, ref: str = "latest") -> ModelVersion:
        return self._read_manifest(model, self.resolve(model, ref))

    def read_file(self, model: str, ref: str, name: str) -> bytes:
        return self.read_files(self.get(model, ref), [name])[name]

    def read_files(self, version: ModelVersion, names: list[str]) -> dict[str, bytes]:
        """Files of a version whose manifest is already read, each checked against it."""
        out = {}
        for name in names:
            if name not in version.files:
                raise RegistryError(f"{version.model}/{version.version} has no file {name!r}")
            data = self.store.get(f"{version.model}/versions/{version.version}/{name}")
            if sha256_bytes(data) != version.files[name]["sha256"]:
                raise ChecksumMismatch(
                    f"{version.model}/{version.version}/{name}: sha256 does not match the manifest"
                )
            out[name] = data
        return out

    def download(
        self, model: str, ref: str, dest: str | Path, files: Iterable[str] | None = None
    ) -> tuple[ModelVersion, Path]:
        """Copies a version's files into ``dest`` after verifying every checksum, with its
        ``MANIFEST.json``; ``files``: only those (e.g. a bundle without its reference
        sample), and no manifest, since the folder is not the whole version."""
        version = self.get(model, ref)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        names = list(version.files) if files is None else list(files)
        for name, data in self.read_files(version, names).items():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if files is None:
            (dest / MANIFEST).write_text(json.dumps(_manifest_dict(version), indent=2))
        return version, dest

    def find_by_run_id(self, model: str, run_id: str) -> ModelVersion | None:
        for version in reversed(self.list_versions(model)):
            if version.lineage.get("pipeline_run_id") == run_id:
                return version
        return None

    # --- aliases -----------------------------------------------------------------------
    def get_alias(self, model: str, alias: str) -> str | None:
        key = f"{model}/aliases/{alias}.json"
        if not self.store.exists(key):
            return None
        return json.loads(self.store.get(key))["version"]

    def set_alias(self, model: str, alias: str, version: str) -> None:
        if _VERSION_RE.match(alias) or alias == "latest":
            raise RegistryError(f"{alias!r} is reserved and cannot be an alias")
        self.get(model, version)  # must exist
        body = {"version": version, "updated_at": datetime.now(UTC).isoformat()}
        self.store.put(f"{model}/aliases/{alias}.json", json.dumps(body).encode())

    # --- publishing --------------------------------------------------------------------
    def _claim_next(self, model: str) -> str:
        token = uuid.uuid4().hex
        for _ in range(_MAX_CLAIM_TRIES):
            claimed = self._version_numbers(model, claimed=True)
            published = self._version_numbers(model, claimed=False)
            n = max([0, *claimed, *published]) + 1
            key = f"{model}/versions/v{n}/{CLAIM}"
            if self.store.exists(key):
                continue
            self.store.put(key, token.encode())
            if self.store.get(key).decode() == token:
                return f"v{n}"
        raise RegistryError(f"could not claim a new version of {model!r} in {self.uri}")

    def publish(
        self,
        model: str,
        folder: str | Path,
        *,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        gate: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Publishes every file in ``folder`` as the next immutable version of ``model``."""
        folder = Path(folder)
        paths = sorted(
            p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, CLAIM)
        )
        if not paths:
            raise RegistryError(f"nothing to publish in {folder}")
        payloads = {p.relative_to(folder).as_posix(): p.read_bytes() for p in paths}
        version = self._claim_next(model)
        files = {}
        for name, data in payloads.items():
            self.store.put(f"{model}/versions/{version}/{name}", data)
            files[name] = {"sha256": sha256_bytes(data), "size": len(data)}
        manifest = {
            "model": model,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(),
            "checksum": version_checksum(files),
            "files": files,
            "metrics": metrics or {},
            "lineage": lineage or {},
            "gate": gate or {},
        }
        # The manifest goes last: its atomic put is the moment the version appears.
        self.store.put(
            f"{model}/versions/{version}/{MANIFEST}", json.dumps(manifest, indent=2).encode()
        )
        return self._read_manifest(model, version)


def _manifest_dict(version: ModelVersion) -> dict[str, Any]:
    data = version.to_dict()
    data.pop("uri", None)
    return data
