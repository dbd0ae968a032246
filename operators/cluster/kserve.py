"""KServe's deployment mode, as KServe itself decides it, observed for the reconciler core.

KServe picks an InferenceService's mode from, in order: the mode recorded in its status
(``status.deploymentMode``, fixed once the service exists), its annotation
``serving.kserve.io/deploymentMode`` when the value is a mode KServe knows, and the
``deploy`` entry of the ``inferenceservice-config`` ConfigMap in KServe's namespace
(``{"defaultDeploymentMode": ...}``). Only the Knative-based mode (``Serverless``, called
``Knative`` since KServe 0.15) splits traffic with ``canaryTrafficPercent``; in
``RawDeployment`` (``Standard``) the field is ignored and a new version takes all traffic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from kubeloop.operators.reconciler.types import ServingMode
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
CONFIG_MAP = "inferenceservice-config"
# Modes KServe accepts in the annotation (current names and the legacy ones).
SPLITTING_MODES = frozenset({"Serverless", "Knative"})
KNOWN_MODES = SPLITTING_MODES | {"RawDeployment", "Standard", "ModelMesh"}


def default_mode_from_config(data: dict[str, str] | None) -> str:
    """``deploy.defaultDeploymentMode`` of the ConfigMap's data; raises ``ValueError``
    saying what is missing or malformed."""
    raw = (data or {}).get("deploy")
    if raw is None:
        raise ValueError(f"ConfigMap {CONFIG_MAP} has no 'deploy' entry")
    try:
        deploy = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"ConfigMap {CONFIG_MAP} 'deploy' is not JSON: {exc}") from None
    mode = deploy.get("defaultDeploymentMode") if isinstance(deploy, dict) else None
    if not isinstance(mode, str) or not mode:
        raise ValueError(f"ConfigMap {CONFIG_MAP} 'deploy' names no defaultDeploymentMode")
    return mode


def observed_mode(
    isvc: dict[str, Any] | None,
    annotation: str | None,
    default: tuple[str | None, str],
) -> ServingMode:
    """The mode KServe serves (or will serve) this resource in.

    ``isvc`` is the live InferenceService (None before it is created), ``annotation`` the
    mode the operator puts on a new one, ``default`` the ConfigMap's
    ``(mode, where)``, or ``(None, why it is unknown)``.
    """
    meta = (isvc or {}).get("metadata", {})
    recorded = (isvc or {}).get("status", {}).get("deploymentMode")
    if recorded:
        return _mode(recorded, f"InferenceService {meta.get('name')} status.deploymentMode")
    live = (meta.get("annotations") or {}).get(MODE_ANNOTATION)
    if isvc is not None and live in KNOWN_MODES:
        return _mode(live, f"InferenceService {meta.get('name')} annotation {MODE_ANNOTATION}")
    if isvc is None and annotation in KNOWN_MODES:
        return _mode(annotation, f"ModelDeployment annotation {MODE_ANNOTATION}")
    mode, where = default
    if mode is None:
        # Not knowing whether traffic can be split is not a licence to pretend it is.
        return ServingMode("Unknown", where, splits_traffic=False)
    return _mode(mode, where)


def _mode(name: str, source: str) -> ServingMode:
    return ServingMode(name, source, splits_traffic=name in SPLITTING_MODES)


class KServeConfig:
    """The cluster's default deployment mode, read from KServe's ConfigMap and kept for
    ``ttl_seconds`` (every resource's pass asks; the answer changes only on a KServe
    reconfiguration)."""

    def __init__(
        self,
        core: k8s.CoreV1Api,
        namespace: str,
        *,
        ttl_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core, self.namespace, self.ttl, self.clock = core, namespace, ttl_seconds, clock
        self._cached: tuple[float, tuple[str | None, str]] | None = None

    def default_mode(self) -> tuple[str | None, str]:
        """``(mode, where it was read)``, or ``(None, why it could not be)``."""
        now = self.clock()
        if self._cached is not None and now - self._cached[0] < self.ttl:
            return self._cached[1]
        where = f"ConfigMap {self.namespace}/{CONFIG_MAP} deploy.defaultDeploymentMode"
        try:
            config_map = self.core.read_namespaced_config_map(CONFIG_MAP, self.namespace)
            answer: tuple[str | None, str] = (default_mode_from_config(config_map.data), where)
        except ApiException as exc:
            answer = (
                None,
                f"cannot read ConfigMap {self.namespace}/{CONFIG_MAP}: {exc.status} {exc.reason}",
            )
        except ValueError as exc:
            answer = (None, f"{self.namespace}/{exc}")
        self._cached = (now, answer)
        return answer
