"""``kubeloop pipeline``: compile the pipelines and run them locally or on a KFP cluster."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from kubeloop.pipelines.cluster import ENV_VARS, PipelineCluster

app = typer.Typer(help="Compile and run kubeloop's KFP pipelines.", no_args_is_help=True)

PIPELINES = ("training",)
DEFAULT_EXPERIMENT = "kubeloop"


@app.command("compile")
def compile_pipelines(
    output: Path = typer.Option(None, help="folder for the IR YAML (default: pipelines/compiled)"),
    image_registry: str = typer.Option(
        None, envvar=ENV_VARS["image_registry"], help="registry of the stage images"
    ),
    image_tag: str = typer.Option(None, envvar=ENV_VARS["image_tag"], help="stage image tag"),
    s3_secret: str = typer.Option(
        None, envvar=ENV_VARS["s3_secret"], help="Secret with the S3 credentials"
    ),
    s3_access_key_key: str = typer.Option(
        None, envvar=ENV_VARS["s3_access_key_key"], help="its key holding the access key"
    ),
    s3_secret_key_key: str = typer.Option(
        None, envvar=ENV_VARS["s3_secret_key_key"], help="its key holding the secret key"
    ),
    storage_config_map: str = typer.Option(
        None,
        envvar=ENV_VARS["storage_config_map"],
        help="ConfigMap with KUBELOOP_REGISTRY_URI and KUBELOOP_S3__* for the stages",
    ),
    ray_address: str = typer.Option(
        None,
        envvar=ENV_VARS["ray_address"],
        help="Ray Client address the train task joins (ray://<head service>:10001)",
    ),
) -> None:
    """Compile every pipeline to KFP IR YAML (the files `make check-generated` verifies).

    Unset names keep the defaults of the chart's release `kubeloop`, which the committed
    IR uses; a release's upload Job passes its own.
    """
    from kubeloop.generated import REPO_ROOT
    from kubeloop.pipelines.compile import render

    given = {
        "image_registry": image_registry,
        "image_tag": image_tag,
        "s3_secret": s3_secret,
        "s3_access_key_key": s3_access_key_key,
        "s3_secret_key_key": s3_secret_key_key,
        "storage_config_map": storage_config_map,
        "ray_address": ray_address,
    }
    try:
        cluster = PipelineCluster(**{k: v for k, v in given.items() if v})
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    for rel, text in render(cluster).items():
        path = (output / Path(rel).name) if output else REPO_ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        typer.echo(f"wrote {path}")


def _arguments(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def submit_to_cluster(
    host: str, arguments: dict, run_name: str | None = None, experiment: str = DEFAULT_EXPERIMENT
) -> str:
    """Submits the compiled training pipeline to KFP at ``host``; returns the run id."""
    import kfp

    from kubeloop.generated import REPO_ROOT
    from kubeloop.pipelines.compile import COMPILED

    package = REPO_ROOT / COMPILED["training"]
    if not package.exists():
        raise typer.BadParameter(f"{package} is missing; run `kubeloop pipeline compile` first")
    client = kfp.Client(host=host)
    result = client.create_run_from_pipeline_package(
        str(package), arguments=arguments, run_name=run_name, experiment_name=experiment
    )
    return result.run_id


@app.command("run")
def run(
    name: str = typer.Argument("training", help=f"pipeline to run: {', '.join(PIPELINES)}"),
    local: bool = typer.Option(False, "--local", help="run here with kfp.local (subprocesses)"),
    containers: bool = typer.Option(
        False,
        "--containers",
        help="with --local: each stage in its own container, from the stage images "
        "(`make images`; Docker, or podman's Docker API)",
    ),
    host: str = typer.Option(None, "--host", help="KFP API endpoint, e.g. http://ml-pipeline:8888"),
    source_uri: str = typer.Option(None, help="data source (default: the built-in fraud example)"),
    schema_uri: str = typer.Option("", help="schema of the source (default: next to the data)"),
    window_start: str = typer.Option("", help="ISO-8601 start of the data window"),
    window_end: str = typer.Option("", help="ISO-8601 end of the data window (exclusive)"),
    model_name: str = typer.Option(None, help="registry model name (default: settings)"),
    registry_uri: str = typer.Option(None, help="registry location (default: settings)"),
    eval_fraction: float = typer.Option(0.2, help="latest share of the window held out"),
    num_workers: int = typer.Option(None, help="Ray Train workers"),
    use_gpu: bool = typer.Option(None, "--use-gpu/--no-gpu", help="train on GPUs"),
    epochs: int = typer.Option(None, help="training epochs"),
    batch_size: int = typer.Option(None, help="mini-batch size"),
    learning_rate: float = typer.Option(None, help="Adam learning rate"),
    hidden_units: int = typer.Option(None, help="hidden layer width"),
    members: int = typer.Option(None, help="networks averaged as one deep ensemble"),
    seed: int = typer.Option(None, help="training seed"),
    run_name: str = typer.Option(None, help="run name on the cluster"),
    experiment: str = typer.Option(DEFAULT_EXPERIMENT, help="KFP experiment on the cluster"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="stream every stage's full log"),
) -> None:
    """Run a pipeline: `--local` here (stage progress and a summary), or `--host` on KFP."""
    if name not in PIPELINES:
        raise typer.BadParameter(f"unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}")
    if local == bool(host):
        raise typer.BadParameter("choose exactly one of --local or --host URL")
    if containers and not local:
        raise typer.BadParameter("--containers runs the stages here: use it with --local")
    from kubeloop.pipelines.training import DEFAULT_SOURCE

    arguments = _arguments(
        source_uri=source_uri or DEFAULT_SOURCE,
        schema_uri=schema_uri,
        window_start=window_start,
        window_end=window_end,
        model_name=model_name,
        registry_uri=registry_uri,
        eval_fraction=eval_fraction,
        num_workers=num_workers,
        use_gpu=use_gpu,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        hidden_units=hidden_units,
        members=members,
        seed=seed,
    )
    if host:
        run_id = submit_to_cluster(host, arguments, run_name=run_name, experiment=experiment)
        typer.echo(json.dumps({"run_id": run_id, "host": host, "arguments": arguments}))
        return
    from kubeloop.local.containers import ContainerEngineError
    from kubeloop.local.pipelines import format_summary, run_training_pipeline

    try:
        result = run_training_pipeline(
            **arguments, verbose=verbose, echo=typer.echo, containers=containers
        )
    except ContainerEngineError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_summary(result))
    if not result.succeeded:
        raise typer.Exit(1)


@app.command("ray-stop")
def ray_stop() -> None:
    """Stop the local Ray head that local training runs share (started on first use)."""
    from kubeloop.training.ray_runtime import stop_local_head

    typer.echo(
        "stopped the local Ray head" if stop_local_head() else "no local Ray head was running"
    )
