"""``kubeloop monitoring``: run the drift service and a local Prometheus by hand."""

from __future__ import annotations

import time
from pathlib import Path

import typer

app = typer.Typer(help="Drift service and local Prometheus.", no_args_is_help=True)


@app.command("drift-service")
def drift_service(
    port: int = typer.Option(8090, help="port on 127.0.0.1"),
    registry_uri: str = typer.Option(None, help="model registry (default: settings)"),
    watch: list[str] = typer.Option([], help="MODEL:VERSION to watch at start"),
) -> None:
    """Starts the drift service from .venv-drift and waits (Ctrl-C stops it)."""
    import httpx

    from kubeloop.local.drift import start_drift_service
    from kubeloop.local.supervisor import Supervisor
    from kubeloop.settings import get_settings

    settings = get_settings()
    with (
        Supervisor(settings.home / "runtime" / "monitoring") as sup,
        start_drift_service(sup, registry_uri or settings.registry_uri, port) as svc,
    ):
        for spec in watch:
            model, _, version = spec.partition(":")
            httpx.post(svc.url + "/v1/watch", json={"model": model, "version": version or "latest"},
                       timeout=60).raise_for_status()  # fmt: skip
            typer.echo(
                f"watching {model}/{version or 'latest'}: detectors arming in the background "
                "(a minute the first time; GET /v1/status shows when armed)"
            )
        typer.echo(f"drift service on {svc.url} (log: {svc.log_path})")
        _wait(svc)


@app.command("prometheus")
def prometheus(
    target: list[str] = typer.Option(..., help="JOB=HOST:PORT, repeatable"),
    port: int = typer.Option(9090, help="port on 127.0.0.1"),
    work_dir: Path = typer.Option(
        None, help="config and TSDB folder (default: HOME/runtime/prometheus)"
    ),
) -> None:
    """Starts /usr/bin/prometheus with kubeloop's alert rules, scraping the given targets."""
    from kubeloop.local.prometheus import SHIPPED_RULES, start_prometheus
    from kubeloop.local.supervisor import Supervisor
    from kubeloop.settings import get_settings

    targets: dict[str, list[str]] = {}
    for item in target:
        job, sep, addr = item.partition("=")
        if not sep or ":" not in addr:
            raise typer.BadParameter(f"target {item!r} must look like JOB=HOST:PORT")
        targets.setdefault(job, []).append(addr)
    runtime = get_settings().home / "runtime"
    with Supervisor(runtime / "monitoring") as sup:
        prom = start_prometheus(sup, work_dir or runtime / "prometheus", port, targets=targets,
                                rule_files=[SHIPPED_RULES], scrape_interval="15s")  # fmt: skip
        typer.echo(f"prometheus on {prom.url} (log: {prom.log_path})")
        _wait(prom)


def _wait(service) -> None:  # noqa: ANN001
    """Until the service exits or Ctrl-C; the supervisor then stops it."""
    try:
        while service.running():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
