"""Query and body parameters of the drift service's JSON endpoints (pure logic, no I/O).

Each parser returns typed values or raises :class:`BadRequest` naming the parameter, so a
client's mistake is a 4xx before anything runs, never a 500.
"""

from __future__ import annotations

import math
import re
from typing import Any

from kubeloop.drift.events import clip

MAX_WAIT_SECONDS = 300.0  # the longest `GET /v1/status?wait=idle&timeout=` a caller may ask for
# A model or version name is one path segment of the registry: no slash, no leading dot.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
_MAX_URI_CHARS = 1024


class BadRequest(ValueError):
    """A request the service refuses with a 4xx; the message names the parameter."""


def wait_timeout(params: Any, until: str = "idle") -> float | None:
    """``GET /v1/status?wait=idle`` (``until="idle"``) and ``POST /v1/watch?wait=armed``
    (``until="armed"``) queries: None (answer now) or seconds to wait at most."""
    wait = params.get("wait")
    if wait is None:
        return None
    if wait != until:
        raise BadRequest(f"query parameter 'wait' must be {until!r}, got {clip(wait)}")
    raw = params.get("timeout", "30")
    try:
        timeout = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter 'timeout' must be a number, got {clip(raw)}") from None
    if not (math.isfinite(timeout) and 0 <= timeout <= MAX_WAIT_SECONDS):
        raise BadRequest(
            f"query parameter 'timeout' must be between 0 and {MAX_WAIT_SECONDS:g} seconds"
        )
    return timeout


def report_fdr(params: Any) -> float:
    """``GET /v1/report?fdr=`` : the false discovery rate of the batch tests (0.05 unless
    given), a number strictly between 0 and 1."""
    raw = params.get("fdr", "0.05")
    try:
        fdr = float(raw)
    except ValueError:
        fdr = math.nan
    if not 0.0 < fdr < 1.0:  # NaN fails too
        raise BadRequest(f"query parameter 'fdr' must be a number in (0, 1), got {clip(raw)}")
    return fdr


def watch_request(body: Any) -> tuple[str, str, str | None, dict | None, bool]:
    """``POST /v1/watch`` body → (model, version, registry_uri, detector overrides, reset)."""
    if not isinstance(body, dict):
        raise BadRequest("watch body must be a JSON object")
    model, version = body.get("model"), body.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    for name, value in (("model", model), ("version", version)):
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise BadRequest(
                f"watch needs '{name}': a name of letters, digits, '.', '_' or '-', "
                f"got {clip(value)}"
            )
    registry_uri = body.get("registry_uri")
    if registry_uri is not None and (
        not isinstance(registry_uri, str)
        or not registry_uri.isprintable()
        or not 0 < len(registry_uri) <= _MAX_URI_CHARS
    ):
        raise BadRequest(f"'registry_uri' must be a printable string of at most {_MAX_URI_CHARS}")
    detectors = body.get("detectors")
    if detectors is not None and not isinstance(detectors, dict):
        raise BadRequest("'detectors' must be an object of detector settings")
    reset = body.get("reset", False)
    if not isinstance(reset, bool):
        raise BadRequest(f"'reset' must be true or false, got {clip(reset)}")
    return model, version, registry_uri, detectors, reset
