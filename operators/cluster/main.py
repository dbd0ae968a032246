"""The kopf operator: thin registration over ``handlers.reconcile_resource``.

``python -m kubeloop.operators.cluster`` loads settings once, builds the clients, registers
the handlers on a fresh kopf registry (the timer interval comes from settings), and runs
kopf only while this replica holds the leader Lease (``election.py``), so several
replicas can run and one reconciles.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf
from kubeloop.operators.cluster.handlers import ClusterDeps, reconcile_resource
from kubeloop.operators.crd import GROUP, PLURAL, PROMOTE_ANNOTATION, ROLLBACK_ANNOTATION, VERSION
from kubeloop.operators.settings import OperatorSettings, load_operator_settings

log = logging.getLogger("kubeloop.operator")
# /healthz on every replica (the chart's probes); 8081 is /metrics.
HEALTH_PORT = 8080


def build_registry(settings: OperatorSettings, deps: ClusterDeps) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    # A registry of our own has none of kopf's implicit logins: authenticate the way the
    # kubernetes client does (in-cluster ServiceAccount, else kubeconfig).
    kopf.on.login(registry=registry, id="login")(kopf.login_via_client)
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


class ClusterUnavailable(RuntimeError):
    """Neither the pod's service account nor a kubeconfig names a cluster."""


def load_cluster_config() -> None:
    """Configures the Kubernetes client from the pod's service account, else the
    kubeconfig; raises :class:`ClusterUnavailable` saying which were looked for."""
    from kubernetes import config

    try:
        config.load_incluster_config()
        return
    except config.ConfigException as exc:
        in_cluster = str(exc)
    try:
        config.load_kube_config()
    except (config.ConfigException, OSError) as exc:
        raise ClusterUnavailable(
            "no Kubernetes cluster to operate on: not in a pod "
            f"({in_cluster.rstrip('.')}) and no usable kubeconfig "
            f"(${{KUBECONFIG}} or ~/.kube/config: {exc})"
        ) from None


def build_deps(settings: OperatorSettings) -> ClusterDeps:
    import kfp
    from kubeloop.operators.metrics import RolloutMetrics
    from kubeloop.operators.observe import PrometheusObserver
    from kubeloop.operators.runs import KfpRunSubmitter
    from kubernetes import client

    from kubeloop.registry import ModelRegistry
    from kubeloop.settings import get_settings

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
        storage_service_account=get_settings().cluster.storage_service_account,
    )


class KopfThread:
    """kopf in its own thread and event loop, started when this replica leads and stopped
    (through kopf's ``stop_flag``) when it does not."""

    def __init__(self, run: Callable[[threading.Event], None], stop_timeout: float = 30.0):
        self._run, self.stop_timeout = run, stop_timeout
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._guarded, args=(self._stop,), name="kopf", daemon=True
        )
        self._thread.start()
        log.info("leading: kopf handlers started")

    def _guarded(self, stop: threading.Event) -> None:
        try:
            self._run(stop)
        except Exception:  # the elector sees the thread gone and starts kopf again
            log.exception("kopf stopped with an error")

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(self.stop_timeout)
        if self._thread.is_alive():
            log.error("kopf did not stop within %.0f s", self.stop_timeout)
        else:
            log.info("kopf handlers stopped")
        self._thread = None


def kopf_runner(
    registry: kopf.OperatorRegistry, namespaces: list[str]
) -> Callable[[threading.Event], None]:
    """kopf in the calling thread until ``stop`` is set. Standalone: leadership comes from
    the Lease, not from kopf's peering."""

    def run(stop: threading.Event) -> None:
        kopf.run(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=True,
            stop_flag=stop,
        )

    return run


def serve_health(
    port: int, healthy: Callable[[], bool], host: str = "0.0.0.0"
) -> ThreadingHTTPServer:
    """``/healthz`` for the probes on every replica, leader or follower (kopf's own
    liveness endpoint only exists while kopf runs)."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            ok = self.path.split("?")[0] == "/healthz" and healthy()
            body = b"ok\n" if ok else b"unhealthy\n"
            self.send_response(200 if ok else (503 if self.path.startswith("/healthz") else 404))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802
            ok = self.path.split("?")[0] == "/healthz" and healthy()
            self.send_response(200 if ok else (503 if self.path.startswith("/healthz") else 404))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _not_allowed(self) -> None:
            # A method the endpoint does not take is the client's mistake: 405, not 501.
            body = b"method not allowed; use GET\n"
            self.send_response(405)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Health)
    threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()
    return server


def main() -> None:
    from kubeloop.operators.cluster.election import (
        LeaderElector,
        LeaseLock,
        load_election_settings,
    )
    from kubernetes import client
    from prometheus_client import start_http_server

    try:
        settings = load_operator_settings()
        namespaces = settings.watched_namespaces()  # a clear error before anything starts
        load_cluster_config()
        election = load_election_settings()
    except (ValueError, ClusterUnavailable) as exc:
        # A configuration problem, not a crash: say what is missing and exit non-zero.
        raise SystemExit(f"kubeloop operator: {exc}") from None
    deps = build_deps(settings)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    registry = build_registry(settings, deps)

    kopf_thread = KopfThread(kopf_runner(registry, namespaces))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if not election.enabled:
        serve_health(HEALTH_PORT, kopf_thread.running)
        kopf_thread.start()
        stop.wait()
        kopf_thread.stop()
        return
    timing = election.timing()
    elector = LeaderElector(
        LeaseLock(
            client.CoordinationV1Api(),
            election.lease_name,
            election.namespace,
            request_timeout=timing.retry_period,
        ),
        election.identity,
        timing,
    )
    serve_health(
        HEALTH_PORT, lambda: elector.alive() and (not elector.leading() or kopf_thread.running())
    )
    elector.run(kopf_thread.start, kopf_thread.stop, stop, work_alive=kopf_thread.running)


if __name__ == "__main__":
    main()
