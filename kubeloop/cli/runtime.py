"""``kubeloop up`` / ``kubeloop down``: the local runtime without the demo's scripted traffic.

``up`` starts Prometheus, the drift service, the router, the stage server that
retraining runs fork their pipeline stages from, and the operator under one
supervisor (state and logs in ``$KUBELOOP_HOME/runtime``) on the operator settings'
ports, so ``kubeloop rollout apply|status`` talk to it, and a watchdog that restarts
any of them that dies; ``down`` stops all of them, the watchdog first, including the
predictors and retraining runs the operator started.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _runtime():
    from kubeloop.local.runtime import LocalRuntime, RuntimePorts
    from kubeloop.operators.settings import load_operator_settings
    from kubeloop.settings import get_settings

    settings = get_settings()
    op = load_operator_settings()

    def port(url: str) -> int:
        return int(url.rstrip("/").rsplit(":", 1)[1])

    ports = RuntimePorts(
        prometheus=port(op.prometheus_url),
        router=port(op.router_url),
        drift=port(op.drift_service_url),
        operator_metrics=op.metrics_port,
    )
    home = Path(settings.home).resolve()
    uri = settings.registry_uri
    uri = uri if "://" in uri else str(Path(uri).resolve())
    runtime = LocalRuntime(home, ports, registry_uri=uri)
    if op.state_dir.resolve() != runtime.state_dir:
        raise typer.BadParameter(
            f"KUBELOOP_OPERATOR_STATE_DIR ({op.state_dir}) must be {runtime.state_dir} "
            "(the runtime folder under KUBELOOP_HOME) for `kubeloop up`"
        )
    return runtime


def up(
    apply: list[Path] = typer.Option(
        [], "--apply", "-f", exists=True, dir_okay=False, help="ModelDeployment YAML to apply"
    ),
    feast_store: Path = typer.Option(
        None,
        exists=True,
        file_okay=False,
        help="a prepared Feast repository (feature_store.yaml, applied and materialized): "
        "every predictor enriches entity-key requests from its online store",
    ),
    warm_stages: bool = typer.Option(
        True,
        help="run a stage server that retraining runs fork their pipeline stages from "
        "(imports paid once, about 570 MB resident) instead of starting a process per stage",
    ),
) -> None:
    """Start the local runtime (Prometheus, drift service, router, operator) and keep it running."""
    runtime = _runtime()
    runtime.warm_stages = warm_stages
    if feast_store is not None:
        if not (feast_store / "feature_store.yaml").exists():
            raise typer.BadParameter(
                f"{feast_store} holds no feature_store.yaml", param_hint="--feast-store"
            )
        runtime.operator_env["KUBELOOP_OPERATOR_FEAST_STORE"] = str(feast_store.resolve())
    try:
        runtime.start(list(apply))
    except Exception as exc:
        runtime.stop()
        typer.echo(f"kubeloop up failed: {exc}", err=True)
        raise typer.Exit(1) from None
    # Long-running parts by health (with their restarts), retraining runs by result.
    for name, status in runtime.status().items():
        typer.echo(f"{name:<12} {status}")
    for part in ("prometheus", "router", "drift"):
        typer.echo(f"{part:<12} {runtime.url(part)}")
    typer.echo(f"logs under {runtime.supervisor.logs}; stop with `kubeloop down`")


def down() -> None:
    """Stop everything `kubeloop up` (and the operator under it) started."""
    stopped = _runtime().stop()
    typer.echo(f"stopped {len(stopped)} process(es){': ' + ', '.join(stopped) if stopped else ''}")
