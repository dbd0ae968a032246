"""``kubeloop registry``: list and inspect model versions, their metrics and lineage."""

from __future__ import annotations

import json

import typer

app = typer.Typer(
    help="Inspect the model registry (local directory or s3://).", no_args_is_help=True
)


def _registry():
    from kubeloop.registry import ModelRegistry
    from kubeloop.settings import get_settings

    settings = get_settings()
    return settings, ModelRegistry(settings.registry_uri)


def gate_label(gate: dict) -> str:
    """The gate column: the registry's one rule, marked when the version has no gate record."""
    from kubeloop.registry import gate_passed

    label = "passed" if gate_passed(gate) else "failed"
    return label if gate else f"{label} (no record)"


@app.command("list")
def list_versions(
    model: str = typer.Option(None, help="model name (default: settings.model_name)"),
) -> None:
    """List versions with their key metrics, gate decision and lineage."""
    from rich.console import Console
    from rich.table import Table

    settings, registry = _registry()
    model = model or settings.model_name
    versions = registry.list_versions(model)
    champion = registry.get_alias(model, "champion")
    table = Table(title=f"{model} @ {registry.uri}")
    for col in ("version", "created", "roc_auc", "pr_auc", "ece", "gate", "data hash", "run id"):
        table.add_column(col)
    for v in versions:
        m = v.metrics
        table.add_row(
            v.version + (" (champion)" if v.version == champion else ""),
            v.created_at[:19],
            f"{m.get('roc_auc', float('nan')):.4f}",
            f"{m.get('pr_auc', float('nan')):.4f}",
            f"{m.get('ece', float('nan')):.4f}",
            gate_label(v.gate),
            str(v.lineage.get("data_hash", "-"))[:12],
            str(v.lineage.get("pipeline_run_id", "-")),
        )
    Console().print(table if versions else f"no versions of {model} in {registry.uri}")


@app.command("show")
def show(
    version: str = typer.Argument("latest", help="v<N>, an alias such as champion, or latest"),
    model: str = typer.Option(None, help="model name (default: settings.model_name)"),
) -> None:
    """Show one version's manifest: files and checksums, metrics, gate and lineage."""
    settings, registry = _registry()
    v = registry.get(model or settings.model_name, version)
    typer.echo(json.dumps(v.to_dict(), indent=2))
