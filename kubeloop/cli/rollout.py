"""``kubeloop rollout``: kubectl-style verbs for a ModelDeployment, local or in a cluster.

Locally they read and write the operator's state folder; with ``--cluster`` they patch the
resource (an annotation for promote/rollback, ``spec.rollout.paused`` for pause/resume),
and the operator acts on its next pass.
"""

from __future__ import annotations

import json
from typing import Any

import typer

app = typer.Typer(help="Inspect and steer ModelDeployment rollouts.", no_args_is_help=True)

CLUSTER = typer.Option(False, "--cluster", help="act on the resource in the current kube context")
NAMESPACE = typer.Option("default", "--namespace", "-n", help="namespace (with --cluster)")


class _Target:
    """Either the local operator's store or the Kubernetes API, behind the same verbs."""

    def __init__(self, name: str, cluster: bool, namespace: str) -> None:
        self.name, self.cluster, self.namespace = name, cluster, namespace
        if cluster:
            import os

            from kubernetes import client, config

            # Read $KUBECONFIG now: the client library captures it at import time.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
            self.api = client.CustomObjectsApi()
        else:
            from kubeloop.local.operator.driver import LocalStore
            from kubeloop.operators.settings import load_operator_settings

            self.store = LocalStore(load_operator_settings().state_dir)

    def _path(self) -> tuple:
        from kubeloop.operators.crd import GROUP, PLURAL, VERSION

        return (GROUP, VERSION, self.namespace, PLURAL, self.name)

    def status(self) -> dict[str, Any]:
        if self.cluster:
            return self.api.get_namespaced_custom_object(*self._path()).get("status", {})
        self.store.manifest(self.name)
        return self.store.state(self.name).get("status", {})

    def command(self, verb: str, version: str) -> None:
        from kubeloop.operators.crd import PROMOTE_ANNOTATION, ROLLBACK_ANNOTATION

        if self.cluster:
            key = PROMOTE_ANNOTATION if verb == "promote" else ROLLBACK_ANNOTATION
            self.api.patch_namespaced_custom_object(
                *self._path(), {"metadata": {"annotations": {key: version}}}
            )
        else:
            self.store.command(self.name, verb, version)

    def set_paused(self, paused: bool) -> None:
        if self.cluster:
            self.api.patch_namespaced_custom_object(
                *self._path(), {"spec": {"rollout": {"paused": paused}}}
            )
        else:
            self.store.patch_spec(
                self.name, lambda spec: spec.setdefault("rollout", {}).update(paused=paused)
            )


def _target(name: str, cluster: bool, namespace: str) -> _Target:
    try:
        return _Target(name, cluster, namespace)
    except Exception as exc:
        raise typer.BadParameter(str(exc)) from None


def _status_or_exit(target: _Target) -> dict[str, Any]:
    try:
        return target.status()
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def drift_explained(history: list[dict[str, Any]]) -> str:
    """The latest drift or label-shift alert in words: the detectors that flagged, the
    inputs that moved most, and the positive class's share (empty without one)."""
    from kubeloop.operators.reconciler.core import moved_inputs, percent

    last = next((d for d in reversed(history) if d.get("decision") in ("drift", "alert")), None)
    if last is None:
        return ""
    evidence = last.get("evidence") or {}
    flagged = sorted(k for k, v in (evidence.get("detectors") or {}).items() if v >= 1)
    parts = [f"drift evidence ({last.get('version', '?')}, {last.get('time', '')}): "
             f"detectors {', '.join(flagged) or '-'}"]  # fmt: skip
    if moved := moved_inputs(evidence):
        parts.append(f"inputs that moved most: {moved}")
    rates = evidence.get("positive_rate") or {}
    if rates.get("predicted") is not None and rates.get("reference_predicted") is not None:
        parts.append(
            f"positive predictions {percent(rates['predicted'])} "
            f"(reference {percent(rates['reference_predicted'])})"
        )
    return "; ".join(parts)


@app.command("status")
def status(
    name: str = typer.Argument(..., help="ModelDeployment name"),
    cluster: bool = CLUSTER,
    namespace: str = NAMESPACE,
    output: str = typer.Option("table", "--output", "-o", help="table or json"),
) -> None:
    """Versions, traffic split, conditions and the latest decisions."""
    st = _status_or_exit(_target(name, cluster, namespace))
    if output == "json":
        typer.echo(json.dumps(st, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from kubeloop.operators.reconciler.types import Phase

    console = Console()
    console.print(
        f"[bold]{name}[/]  phase {st.get('phase', Phase.PENDING)}  stable {st.get('stableVersion') or '-'}  "
        f"candidate {st.get('candidateVersion') or '-'} @ {st.get('canaryPercent', 0)}%  "
        f"previous {st.get('previousVersion') or '-'}  drift {st.get('drift', '-')}"
    )
    if explained := drift_explained(st.get("history") or []):
        console.print(explained, soft_wrap=True, highlight=False)
    conditions = Table(title="conditions")
    for col in ("type", "status", "reason", "message", "since"):
        conditions.add_column(col)
    for c in st.get("conditions", []):
        conditions.add_row(
            c["type"], c["status"], c["reason"], c.get("message", ""), c["lastTransitionTime"]
        )
    console.print(conditions)
    analysis = st.get("analysis") or {}
    if st.get("phase") in (Phase.CANARY, Phase.WATCHING) and analysis:
        seconds = analysis.get("secondsToDetect")
        console.print(
            f"evidence since {analysis.get('evidenceSince') or '-'}: "
            f"{analysis.get('observedSeconds', 0):.0f}s observed"
            + (f", blind since {analysis['blindSince']}" if analysis.get("blindSince") else "")
        )
        if analysis.get("detectability"):
            when = f" (~{seconds:.0f}s)" if seconds is not None else ""
            console.print(f"detectability{when}: {analysis['detectability']}")
    history = Table(title="recent decisions")
    for col in ("time", "decision", "version", "reason", "message"):
        history.add_column(col)
    for d in st.get("history", [])[-8:]:
        history.add_row(
            d["time"], d["decision"], d.get("version") or "-", d["reason"], d.get("message", "")
        )
    console.print(history)


@app.command("promote")
def promote(
    name: str = typer.Argument(..., help="ModelDeployment name"),
    version: str = typer.Option(None, help="the candidate to promote (default: the current one)"),
    cluster: bool = CLUSTER,
    namespace: str = NAMESPACE,
) -> None:
    """Promote the canary now (also the approval step of a Manual rollout)."""
    target = _target(name, cluster, namespace)
    version = version or _status_or_exit(target).get("candidateVersion")
    if not version:
        typer.echo(f"error: {name} has no candidate to promote", err=True)
        raise typer.Exit(1)
    target.command("promote", version)
    typer.echo(f"{name}: promote {version} requested")


@app.command("rollback")
def rollback(
    name: str = typer.Argument(..., help="ModelDeployment name"),
    version: str = typer.Option(
        None, help="version to roll back (default: the canary, else the stable)"
    ),
    cluster: bool = CLUSTER,
    namespace: str = NAMESPACE,
) -> None:
    """Abort the canary, or return from the stable version to the previous one."""
    target = _target(name, cluster, namespace)
    st = _status_or_exit(target)
    version = (
        version
        or st.get("candidateVersion")
        or (st.get("stableVersion") if st.get("previousVersion") else None)
    )
    if not version:
        typer.echo(f"error: {name} has no canary and no previous version to return to", err=True)
        raise typer.Exit(1)
    target.command("rollback", version)
    typer.echo(f"{name}: rollback of {version} requested")


@app.command("pause")
def pause(
    name: str = typer.Argument(...), cluster: bool = CLUSTER, namespace: str = NAMESPACE
) -> None:
    """Hold the rollout where it is (spec.rollout.paused=true)."""
    _target(name, cluster, namespace).set_paused(True)
    typer.echo(f"{name}: paused")


@app.command("resume")
def resume(
    name: str = typer.Argument(...), cluster: bool = CLUSTER, namespace: str = NAMESPACE
) -> None:
    """Let a paused rollout continue."""
    _target(name, cluster, namespace).set_paused(False)
    typer.echo(f"{name}: resumed")


@app.command("apply")
def apply(
    manifest: str = typer.Option(..., "--filename", "-f", help="ModelDeployment YAML"),
) -> None:
    """Apply a ModelDeployment to the local operator (in a cluster, use kubectl apply)."""
    from kubeloop.local.operator.driver import LocalStore
    from kubeloop.operators.settings import load_operator_settings

    try:
        name = LocalStore(load_operator_settings().state_dir).apply(manifest)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"modeldeployment/{name} configured")
