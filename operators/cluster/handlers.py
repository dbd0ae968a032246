"""One reconcile pass in a cluster: observe, run the pure core, apply its actions.

Called from the thin kopf registration in ``operators/cluster/main.py``; every client is
passed in, so tests drive it against a recording HTTP server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from kubeloop.operators.cluster import inferenceservice as isvc
from kubeloop.operators.crd import API_VERSION, KIND, ModelDeploymentStatus, parse_spec
from kubeloop.operators.gather import commands_from_annotations, gather
from kubeloop.operators.metrics import RolloutMetrics
from kubeloop.operators.observe import PrometheusObserver
from kubeloop.operators.reconciler.conditions import set_condition
from kubeloop.operators.reconciler.core import reconcile
from kubeloop.operators.reconciler.types import (
    RecordDecision,
    SetChampion,
    SetTraffic,
    SubmitRun,
    WatchDrift,
    iso,
)
from kubeloop.operators.runs import RunSubmitter
from kubeloop.operators.settings import OperatorSettings
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)
WARNING_DECISIONS = {"rollback", "retrain-failed"}


@dataclass
class ClusterDeps:
    settings: OperatorSettings
    custom: k8s.CustomObjectsApi
    core: k8s.CoreV1Api
    observer: PrometheusObserver
    submitter: RunSubmitter
    registry_for: Callable[[str | None], Any]
    metrics: RolloutMetrics
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Predictors' storage ServiceAccount (kubeloop.settings cluster.storage_service_account).
    storage_service_account: str = isvc.DEFAULT_SERVICE_ACCOUNT


def reconcile_resource(
    *,
    name: str,
    namespace: str,
    uid: str,
    generation: int,
    spec: dict[str, Any],
    status: dict[str, Any] | None,
    annotations: dict[str, str] | None,
    deps: ClusterDeps,
) -> dict[str, Any]:
    """Returns the new status (wire format) after applying this pass's actions."""
    now = deps.now()
    current = ModelDeploymentStatus.model_validate(_own_status(status))
    try:
        parsed = parse_spec(spec)
    except ValueError as exc:
        # An invalid spec will not fix itself: say why and stop, no retries.
        current.observed_generation = generation
        current.conditions = set_condition(
            current.conditions,
            "Stalled",
            "True",
            "InvalidSpec",
            str(exc),
            now=iso(now),
            generation=generation,
        )
        return current.wire()
    registry = deps.registry_for(parsed.model.registry_uri)
    live = _get_isvc(deps, name, namespace)
    obs = gather(
        now=now,
        spec=parsed,
        status=current,
        registry=registry,
        observer=deps.observer,
        submitter=deps.submitter,
        ready=isvc.ready_versions(live, current.stable_version),
        commands=commands_from_annotations(annotations),
    )
    result = reconcile(name, parsed, current, obs, generation=generation)
    for action in result.actions:
        if isinstance(action, SetTraffic):
            _apply_traffic(deps, name, namespace, uid, parsed, registry.uri, live, action)
        elif isinstance(action, SubmitRun):
            deps.submitter.submit(action)
        elif isinstance(action, SetChampion):
            registry.set_alias(parsed.model.name, "champion", action.version)
        elif isinstance(action, WatchDrift):
            _watch_drift(deps, parsed.model.name, action.version, registry.uri)
        elif isinstance(action, RecordDecision):
            _post_event(deps, name, namespace, uid, action, now)
            deps.metrics.record(name, action.decision)
    deps.metrics.canary_percent.labels(name).set(result.status.canary_percent)
    # Explicit nulls: a merge patch must clear fields that became empty (candidateVersion).
    return result.status.model_dump(by_alias=True, mode="json")


def _own_status(status: dict[str, Any] | None) -> dict[str, Any]:
    # kopf keeps its own bookkeeping next to ours; only our fields go to the model.
    fields = set(ModelDeploymentStatus.model_fields) | {
        f.alias for f in ModelDeploymentStatus.model_fields.values() if f.alias
    }
    return {k: v for k, v in (status or {}).items() if k in fields}


def _get_isvc(deps: ClusterDeps, name: str, namespace: str) -> dict[str, Any] | None:
    try:
        return deps.custom.get_namespaced_custom_object(
            isvc.ISVC_GROUP, isvc.ISVC_VERSION, namespace, isvc.ISVC_PLURAL, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _apply_traffic(
    deps, name, namespace, uid, spec, registry_uri, live, action: SetTraffic
) -> None:
    if live is None:
        body = isvc.inference_service(
            name, namespace, uid, spec, registry_uri, action.stable, deps.storage_service_account
        )
        deps.custom.create_namespaced_custom_object(
            isvc.ISVC_GROUP, isvc.ISVC_VERSION, namespace, isvc.ISVC_PLURAL, body
        )
        return
    patch = isvc.traffic_patch(
        spec,
        registry_uri,
        action.stable,
        action.canary,
        action.canary_percent,
        deps.storage_service_account,
    )
    if isvc.needs_patch(live, patch):
        deps.custom.patch_namespaced_custom_object(
            isvc.ISVC_GROUP, isvc.ISVC_VERSION, namespace, isvc.ISVC_PLURAL, name, patch
        )


def _watch_drift(deps: ClusterDeps, model: str, version: str, registry_uri: str) -> None:
    url = f"{deps.settings.drift_service_url.rstrip('/')}/v1/watch"
    try:
        httpx.post(
            url, json={"model": model, "version": version, "registry_uri": registry_uri}, timeout=10
        )
    except httpx.HTTPError as exc:
        log.warning("drift service at %s did not take %s/%s: %s", url, model, version, exc)


def _post_event(deps, name, namespace, uid, decision: RecordDecision, now: datetime) -> None:
    body = k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(generate_name=f"{name}."),
        involved_object=k8s.V1ObjectReference(
            api_version=API_VERSION, kind=KIND, name=name, namespace=namespace, uid=uid
        ),
        reason=decision.reason,
        message=decision.message[:1024],
        type="Warning" if decision.decision in WARNING_DECISIONS else "Normal",
        action=decision.decision,
        first_timestamp=now,
        last_timestamp=now,
        count=1,
        source=k8s.V1EventSource(component="kubeloop-operator"),
        reporting_component="kubeloop-operator",
        reporting_instance="kubeloop-operator",
    )
    try:
        deps.core.create_namespaced_event(namespace, body)
    except ApiException as exc:  # an event lost is not worth failing the pass
        log.warning("could not post event %s for %s/%s: %s", decision.reason, namespace, name, exc)
