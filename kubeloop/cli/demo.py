"""``kubeloop demo``: the main job on one machine, from no state to a registered model.

For now one full run of the training pipeline on the bundled example data (ingest →
validate → features → Ray Train → evaluate → gate → register) with its summary.
"""

from __future__ import annotations

import typer


def demo(
    source_uri: str = typer.Option(
        None, help="data source of the training run (default: the built-in fraud example)"
    ),
    epochs: int = typer.Option(None, help="training epochs (default: settings)"),
    keep_ray: bool = typer.Option(
        False, "--keep-ray/--stop-ray", help="leave the local Ray head running for later runs"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="stream every stage's full log"),
) -> None:
    """Run the training pipeline locally on the example data and summarise the result."""
    from kubeloop.pipelines.local import format_summary, run_training_pipeline
    from kubeloop.pipelines.training import DEFAULT_SOURCE
    from kubeloop.training.ray_runtime import read_head, stop_local_head

    source_uri = source_uri or DEFAULT_SOURCE
    ray_was_running = read_head() is not None
    typer.echo(f"kubeloop demo: training pipeline on {source_uri}")
    try:
        result = run_training_pipeline(
            source_uri=source_uri, epochs=epochs, verbose=verbose, echo=typer.echo
        )
    finally:
        if not keep_ray and not ray_was_running:
            stop_local_head()
    typer.echo(format_summary(result))
    if not result.succeeded:
        raise typer.Exit(1)
