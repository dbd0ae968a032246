"""The drift service's admin API as both drivers use it: ``POST /v1/watch`` and the watched
list of ``GET /v1/status`` (docs/contracts.md).

Watching is asynchronous on the service's side (it answers 202 and arms the detectors in
the background), so a watch costs the operator's pass one short request; a version being
armed counts as watched, so the pass does not ask for it again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

log = logging.getLogger(__name__)
# How long one answer of /v1/status stands for the watched set: the loop asks every pass,
# the local one about twice a second, and a restart is noticed within this long.
STATUS_TTL_SECONDS = 10.0
# The service answers a watch once it has read the version's reference sample from the
# registry; arming the detectors (seconds to minutes) happens after the answer.
WATCH_TIMEOUT_SECONDS = 3.0
STATUS_TIMEOUT_SECONDS = 3.0
# States of a watched version that need no new watch; "failed" does (the next pass retries).
WATCHING_STATES = frozenset({"arming", "armed"})


class DriftServiceClient:
    """Watches versions and reports which versions of a model the service watches now."""

    def __init__(
        self,
        url: str,
        *,
        http: httpx.Client | None = None,
        status_ttl_seconds: float = STATUS_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url.rstrip("/")
        self.http = http or httpx.Client(timeout=10)
        self.ttl = status_ttl_seconds
        self.clock = clock
        self._checked_at = -float("inf")
        self._watched: set[tuple[str, str]] | None = None

    def watch(
        self,
        model: str,
        version: str,
        registry_uri: str,
        *,
        reset: bool = False,
        detectors: dict[str, Any] | None = None,
    ) -> bool:
        """True when the service took the watch (it arms the detectors in the background);
        a failure is logged and retried by the next pass (the version still shows as not
        watched). A version armed or being armed on the same reference is left as it is,
        unless ``reset`` asks for fresh detectors. ``detectors`` override the service's
        detector settings for this version (a different set re-arms it)."""
        try:
            response = self.http.post(
                f"{self.url}/v1/watch",
                json={
                    "model": model,
                    "version": version,
                    "registry_uri": registry_uri,
                    "reset": reset,
                    **({"detectors": detectors} if detectors else {}),
                },
                timeout=WATCH_TIMEOUT_SECONDS,
            )
        except httpx.HTTPError as exc:
            log.warning("drift service at %s did not take %s/%s: %s", self.url, model, version, exc)
            return False
        if response.status_code >= 300:
            log.warning(
                "drift service refused %s/%s: %s %s",
                model,
                version,
                response.status_code,
                response.text[:200],
            )
            return False
        if self._watched is not None:
            self._watched.add((model, version))  # until the next /v1/status says otherwise
        return True

    def watched(self, model: str) -> frozenset[str] | None:
        """The versions of ``model`` watched now, being armed included (a failed arming is
        not: it is asked again); None when the service cannot say (it is down, or answers
        without a watched list)."""
        now = self.clock()
        if now - self._checked_at >= self.ttl:
            self._checked_at = now
            try:
                body = (
                    self.http.get(f"{self.url}/v1/status", timeout=STATUS_TIMEOUT_SECONDS)
                    .raise_for_status()
                    .json()
                )
                self._watched = {
                    (w["model"], w["version"])
                    for w in body["watched"]
                    if w.get("state", "armed") in WATCHING_STATES
                }
            except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.debug("drift service status at %s unavailable: %s", self.url, exc)
                self._watched = None
        if self._watched is None:
            return None
        return frozenset(v for m, v in self._watched if m == model)
