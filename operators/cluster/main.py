"""The kopf operator: thin registration over ``handlers.reconcile_resource``.

``python -m kubeloop.operators.cluster`` loads settings once, builds the clients, registers
the handlers on a fresh kopf registry (the timer interval comes from settings) and runs.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubeloop.operators.cluster.handlers import ClusterDeps, reconcile_resource
from kubeloop.operators.crd import GROUP, PLURAL, PROMOTE_ANNOTATION, ROLLBACK_ANNOTATION, VERSION
from kubeloop.operators.settings import OperatorSettings, load_operator_settings

log = logging.getLogger("kubeloop.operator")


def build_registry(settings: OperatorSettings, deps: ClusterDeps) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    resource = dict(group=GROUP, version=VERSION, plural=PLURAL)

    def one_pass(name, namespace, uid, meta, spec, status, patch, **_: Any) -> None:
        patch.status.update(
            reconcile_resource(
                name=name,
                namespace=namespace,
                uid=uid,
                generation=meta.get("generation", 1),
                spec=dict(spec),
                status=dict(status),
                annotations=dict(meta.get("annotations", {})),
                deps=deps,
            )
        )

    backoff = settings.retry_delay_seconds
    kopf.on.resume(**resource, registry=registry, backoff=backoff, id="resume")(one_pass)
    kopf.on.create(**resource, registry=registry, backoff=backoff, id="create")(one_pass)
    kopf.on.update(**resource, field="spec", registry=registry, backoff=backoff, id="spec")(
        one_pass
    )
    # Only kubeloop's command annotations, not every annotation (kopf writes its own).
    for command in (PROMOTE_ANNOTATION, ROLLBACK_ANNOTATION):
        field = ("metadata", "annotations", command)
        kopf.on.update(**resource, field=field, registry=registry, id=command.split("/")[1])(
            one_pass
        )
    kopf.timer(
        **resource,
        interval=settings.poll_interval_seconds,
        registry=registry,
        backoff=backoff,
        id="analysis",
    )(one_pass)
    return registry


def build_deps(settings: OperatorSettings) -> ClusterDeps:
    import kfp
    from kubeloop.operators.metrics import RolloutMetrics
    from kubeloop.operators.observe import PrometheusObserver
    from kubeloop.operators.runs import KfpRunSubmitter
    from kubernetes import client, config

    from kubeloop.registry import ModelRegistry

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return ClusterDeps(
        settings=settings,
        custom=client.CustomObjectsApi(),
        core=client.CoreV1Api(),
        observer=PrometheusObserver(
            settings.prometheus_url,
            timeout=settings.prometheus_timeout_seconds,
            min_window_seconds=settings.min_window_seconds,
        ),
        submitter=KfpRunSubmitter(kfp.Client(host=settings.kfp_host)),
        registry_for=lambda uri: ModelRegistry(uri),
        metrics=RolloutMetrics(),
    )


def main() -> None:
    from prometheus_client import start_http_server

    settings = load_operator_settings()
    deps = build_deps(settings)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    namespaces = [settings.namespace] if settings.namespace else []
    kopf.run(
        registry=build_registry(settings, deps),
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        liveness_endpoint="http://0.0.0.0:8080/healthz",
    )


if __name__ == "__main__":
    main()
