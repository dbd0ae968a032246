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


@app.command("ensure-bucket")
def ensure_bucket(
    bucket: str = typer.Option(
        None, help="bucket name (default: the bucket of settings.registry_uri, an s3:// URI)"
    ),
) -> None:
    """Create the registry's bucket on its S3 endpoint unless it exists (the chart's bucket
    Job); fail naming the endpoint and the bucket when the credentials cannot reach it."""
    from kubeloop.registry.bucket import BucketError
    from kubeloop.registry.bucket import ensure_bucket as ensure
    from kubeloop.registry.stores import S3Store, endpoint_url, open_store
    from kubeloop.settings import get_settings

    settings = get_settings()
    if bucket is None:
        store = open_store(settings.registry_uri, settings.s3)
        if not isinstance(store, S3Store):
            typer.echo(
                f"error: registry_uri {settings.registry_uri!r} is not s3://bucket/prefix; "
                "pass --bucket",
                err=True,
            )
            raise typer.Exit(2)
        bucket = store.bucket
    endpoint = endpoint_url(settings.s3)
    try:
        created = ensure(bucket, settings.s3)
    except BucketError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{'created' if created else 'found'} bucket {bucket!r} at {endpoint}")
