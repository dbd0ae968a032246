"""``kubeloop generate``: write (or check) every generated file from its one source."""

from __future__ import annotations

import typer


def generate(
    check: bool = typer.Option(
        False, "--check", help="fail if a generated file differs from its source"
    ),
) -> None:
    """Regenerate compiled pipelines, CRDs, dashboards and rules (or check they are current)."""
    from kubeloop.generated import check_all, write_all

    if check:
        stale = check_all()
        if stale:
            for path in stale:
                typer.echo(f"stale: {path} (run `make compile` or `kubeloop generate`)", err=True)
            raise typer.Exit(1)
        typer.echo("all generated files are current")
    else:
        for path in write_all():
            typer.echo(f"wrote {path}")
