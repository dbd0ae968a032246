"""The traffic split between a stable and a canary version (pure logic).

Routing is sticky: a request key (``X-Kubeloop-Key``, else the first instance's entity
id) is hashed to one of 10,000 buckets, and buckets below ``canary_percent * 100`` go
to the canary. A key therefore stays on one version while the split is unchanged, and
raising the percentage only moves keys from stable to canary, never back. Requests
without a key are spread at random. In shadow mode the same buckets are mirrored to
the canary and its answers discarded; the caller always gets the stable answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

BUCKETS = 10_000
MAX_REPORTED_ERRORS = 5  # an error message names at most this many problems


class SplitError(ValueError):
    """An invalid split; the message names the problem."""


class Backend(BaseModel):
    # Strict: the live split never coerces ("10" is not 10, "yes" is not true).
    model_config = ConfigDict(extra="forbid", strict=True)

    version: str = Field(pattern=r"^v\d+$")
    url: str = Field(
        pattern=r"^https?://[^/\s]+$", description="scheme://host:port of the predictor"
    )


class Split(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    stable: Backend
    canary: Backend | None = None
    canary_percent: float = Field(0.0, ge=0.0, le=100.0, allow_inf_nan=False)
    shadow: bool = False

    @model_validator(mode="after")
    def _check(self) -> Split:
        if self.canary is None and self.canary_percent > 0:
            raise ValueError("canary_percent > 0 needs a canary")
        if self.canary is not None and self.canary.version == self.stable.version:
            raise ValueError("stable and canary must be different versions")
        return self

    def percent(self, role: str) -> float:
        canary = self.canary_percent if self.canary is not None else 0.0
        if role == "stable":
            return 100.0 if self.shadow else 100.0 - canary
        if role == "canary":
            return 0.0 if self.shadow else canary
        return canary if self.shadow else 0.0


def parse_split(data: bytes | str | dict) -> Split:
    try:
        if isinstance(data, dict):
            return Split.model_validate(data)
        return Split.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(
            f"{'.'.join(_clip(p) for p in err['loc']) or '<body>'}: {err['msg']}"
            for err in errors[:MAX_REPORTED_ERRORS]
        )
        if len(errors) > MAX_REPORTED_ERRORS:
            problems += f"; and {len(errors) - MAX_REPORTED_ERRORS} more"
        raise SplitError(f"invalid split: {problems}") from None


def _clip(value: object, limit: int = 64) -> str:
    """A field name as an error message may echo it: never more than ``limit`` characters."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bucket(key: str) -> int:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class Route:
    backend: Backend
    role: str  # stable | canary
    endpoint: str  # KServe's Ce-Endpoint: default | canary
    mirror: Backend | None = None  # shadow copy, answer discarded


def choose(split: Split, key: str | None, rng: random.Random | None = None) -> Route:
    """Where one request goes under ``split``."""
    if split.canary is None or split.canary_percent <= 0:
        return Route(split.stable, "stable", "default")
    b = bucket(key) if key is not None else (rng or random).randrange(BUCKETS)
    to_canary = b < split.canary_percent * (BUCKETS / 100)
    if split.shadow:
        return Route(split.stable, "stable", "default", mirror=split.canary if to_canary else None)
    if to_canary:
        return Route(split.canary, "canary", "canary")
    return Route(split.stable, "stable", "default")


def load_split(path: Path) -> Split | None:
    if not path.exists():
        return None
    try:
        return parse_split(path.read_bytes())
    except SplitError as exc:
        raise SplitError(f"{path}: {exc}") from None


def save_split(path: Path, split: Split) -> None:
    """Writes the split atomically (temp file + rename), so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(split.model_dump(), f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
