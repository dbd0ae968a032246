"""One reconcile pass in a cluster: the resource and status through kopf, the shared loop
(``operators/loop.py``), and the cluster's actuators: InferenceService create/patch, runs
on KFP, Kubernetes Events.

Called from the thin kopf registration in ``operators/cluster/main.py``; every client is
passed in, so tests drive it against a recording HTTP server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubeloop.operators.cluster.kserve import MODE_ANNOTATION, KServeConfig, observed_mode
from kubeloop.operators.crd import (
    API_VERSION,
    KIND,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Placement,
    parse_spec,
)
from kubeloop.operators.drift_service import DriftServiceClient
from kubeloop.operators.gather import commands_from_annotations
from kubeloop.operators.loop import ReconcileLoop, SharedActuators, stalled_on_invalid_spec
from kubeloop.operators.metrics import RolloutMetrics
from kubeloop.operators.observe import PrometheusObserver
from kubeloop.operators.reconciler.types import (
    Decision,
    RecordDecision,
    RunObservation,
    ServingMode,
    SetTraffic,
    SubmitRun,
)
from kubeloop.operators.runs import RunSubmitter
from kubeloop.operators.settings import OperatorSettings
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from kubeloop.serving import inference_service as isvc

log = logging.getLogger(__name__)
WARNING_DECISIONS = {Decision.ROLLBACK, Decision.RETRAIN_FAILED}


STORAGE_TTL_SECONDS = 60.0


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
    # One client per operator process: it remembers the watched set between passes.
    drift: DriftServiceClient | None = None
    # KServe's default deployment mode (its ConfigMap), cached between passes.
    kserve: KServeConfig | None = None
    # Namespaces whose storage ServiceAccount was found, and when (monotonic): read again
    # after STORAGE_TTL_SECONDS; a namespace with a problem is read every pass.
    storage_found: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.drift is None:
            self.drift = DriftServiceClient(self.settings.drift_service_url)
        if self.kserve is None:
            self.kserve = KServeConfig(self.core, self.settings.kserve_namespace)


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
        current = stalled_on_invalid_spec(current, exc, now=now, generation=generation)
        return current.wire()
    registry = deps.registry_for(parsed.model.registry_uri)
    actuators = ClusterActuators(
        deps, name, namespace, uid, parsed, registry, current.stable_version, now, annotations
    )
    loop = ReconcileLoop(
        deps.observer, deps.metrics, poll_interval=deps.settings.poll_interval_seconds
    )
    commands = commands_from_annotations(annotations)
    result = loop.run(name, parsed, current, generation, now, commands, registry, actuators)
    # Explicit nulls: a merge patch must clear fields that became empty (candidateVersion).
    return result.status.model_dump(by_alias=True, mode="json")


class ClusterActuators(SharedActuators):
    """The InferenceService (read once per pass), KFP runs and Events of one resource."""

    def __init__(
        self,
        deps: ClusterDeps,
        name: str,
        namespace: str,
        uid: str,
        spec: ModelDeploymentSpec,
        registry: Any,
        stable: str | None,
        now: datetime,
        annotations: dict[str, str] | None = None,
    ) -> None:
        super().__init__(spec.model.name, registry, deps.drift)
        self.deps, self.name, self.namespace, self.uid = deps, name, namespace, uid
        self.spec, self.stable, self.now = spec, stable, now
        # KServe's deployment mode, when the ModelDeployment asks for one: put on the
        # InferenceService the operator creates (KServe fixes it from then on).
        self.requested_mode = (annotations or {}).get(MODE_ANNOTATION)
        self.live = _get_isvc(deps, name, namespace)

    def ready_versions(self, versions: frozenset[str]) -> frozenset[str]:
        return isvc.ready_versions(self.live, self.stable) & versions

    def serving_mode(self) -> ServingMode:
        return observed_mode(self.live, self.requested_mode, self.deps.kserve.default_mode())

    def storage_problem(self) -> str:
        """The storage ServiceAccount predictors here download with, and the Secret it
        names (only its name: the operator never reads Secrets)."""
        account, ns = self.deps.storage_service_account, self.namespace
        found_at = self.deps.storage_found.get(ns)
        if found_at is not None and self.deps.clock() - found_at < STORAGE_TTL_SECONDS:
            return ""
        try:
            sa = self.deps.core.read_namespaced_service_account(account, ns)
        except ApiException as exc:
            if exc.status == 404:
                return (
                    f"ServiceAccount {account} not found in namespace {ns}: predictors here "
                    "could not download model versions; add the namespace to the chart's "
                    "operator.watchNamespaces (it creates the ServiceAccount and its Secret) "
                    "or create them (docs/install.md, Namespaces)"
                )
            if exc.status == 403:
                return (
                    f"the operator may not read ServiceAccount {account} in namespace {ns} "
                    f"({exc.reason}): the namespace is not one the chart serves "
                    "(operator.watchNamespaces)"
                )
            raise  # the API server being unavailable is transient: kopf retries the pass
        if not sa.secrets:
            return (
                f"ServiceAccount {ns}/{account} names no Secret: predictors here have no S3 "
                "credentials to download model versions with"
            )
        self.deps.storage_found[ns] = self.deps.clock()
        return ""

    def run_status(self, run_name: str) -> RunObservation:
        return self.deps.submitter.status(run_name)

    def set_traffic(self, action: SetTraffic) -> None:
        # KServe keeps the previous revision itself; keep_warm needs nothing here.
        _apply_traffic(
            self.deps,
            self.name,
            self.namespace,
            self.uid,
            self.spec,
            self.registry.uri,
            self.live,
            action,
            {MODE_ANNOTATION: self.requested_mode} if self.requested_mode else None,
        )

    def submit_run(self, action: SubmitRun) -> None:
        self.deps.submitter.submit(action)

    def record_decision(self, action: RecordDecision) -> None:
        _post_event(self.deps, self.name, self.namespace, self.uid, action, self.now)


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


def predictor_options(
    spec: ModelDeploymentSpec,
    service_account: str,
    drift_service_url: str | None = None,
    placement_defaults: Placement | None = None,
    feast_config_map: str | None = None,
) -> dict[str, Any]:
    """``isvc.predictor_spec`` keywords for a ModelDeployment: the chart's serving runtime,
    the spec's resources and replicas, its node placement over the release's defaults
    (``placement_defaults``, the chart's servingRuntime values: each field the spec sets
    wins), its logger (default: the release's drift service, the one the operator asks to
    watch the version, so specs need not name a release), the release's storage
    ServiceAccount, the release's Feast ConfigMap (``feast_config_map``) to enrich
    entity-key requests from. Unset resources keep the serving runtime's."""
    res = spec.serving.resources
    placement = spec.serving.over(placement_defaults or Placement())
    return {
        "runtime": isvc.PREDICTOR_RUNTIME,
        "cpu": res.cpu,
        "memory": res.memory,
        "gpus": res.gpu or 0,
        "min_replicas": spec.serving.replicas,
        "max_replicas": spec.serving.max_replicas,
        "logger_url": spec.serving.logger_url or drift_service_url,
        "service_account": service_account,
        "feast_config_map": feast_config_map,
        **_placement_options(placement),
    }


def _placement_options(placement: Placement) -> dict[str, Any]:
    wire = placement.wire()  # camelCase, unset fields left out
    return {name: wire.get(field.alias) for name, field in Placement.model_fields.items()}


def _apply_traffic(
    deps, name, namespace, uid, spec, registry_uri, live, action: SetTraffic, annotations=None
) -> None:
    options = predictor_options(
        spec,
        deps.storage_service_account,
        deps.settings.drift_service_url,
        deps.settings.predictor_placement,
        deps.settings.feast_config_map,
    )
    if live is None:
        body = isvc.inference_service(
            spec.model.name,
            action.stable,
            registry_uri,
            name=name,
            namespace=namespace,
            owner={"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid},
            annotations=annotations,
            canary_percent=100,
            **options,
        )
        deps.custom.create_namespaced_custom_object(
            isvc.ISVC_GROUP, isvc.ISVC_VERSION, namespace, isvc.ISVC_PLURAL, body
        )
        return
    patch = isvc.traffic_patch(
        spec.model.name,
        registry_uri,
        action.stable,
        action.canary,
        action.canary_percent,
        **options,
    )
    if isvc.needs_patch(live, patch):
        deps.custom.patch_namespaced_custom_object(
            isvc.ISVC_GROUP, isvc.ISVC_VERSION, namespace, isvc.ISVC_PLURAL, name, patch
        )


def _post_event(deps, name, namespace, uid, decision: RecordDecision, now: datetime) -> None:
    body = k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(generate_name=f"{name}."),
        involved_object=k8s.V1ObjectReference(
            api_version=API_VERSION, kind=KIND, name=name, namespace=namespace, uid=uid
        ),
        reason=decision.reason,
        message=decision.message[:1024],
        type="Warning" if decision.decision in WARNING_DECISIONS else "Normal",
        action=str(decision.decision),
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
