"""The one place that names kubeloop's container images.

Components (``base_image``), KServe InferenceService templates and the Helm chart all
call :func:`image`, so bumping the registry or the release tag is a one-line change.
"""

from __future__ import annotations

import re

REGISTRY = "ghcr.io/kubeloop"
TAG = "0.1.0"

_NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def image(name: str) -> str:
    """Full reference of a kubeloop image, e.g. ``image("ingest")`` →
    ``ghcr.io/kubeloop/kubeloop-ingest:0.1.0``."""
    if not _NAME_RE.match(name):
        raise ValueError(f"image name must be lowercase words joined by '-', got {name!r}")
    return f"{REGISTRY}/kubeloop-{name}:{TAG}"
