"""``kubeloop demo``: the closed loop on one machine, from no state to a measured update cycle.

By default it runs the whole loop on the local runtime (``kubeloop.demo``): train v1 with
the training pipeline, deploy it, replay traffic with a drift scenario, watch the
operator retrain, canary, promote and roll back a worse candidate, and write
``demo-report/``. ``--pipeline-only`` runs just the training pipeline (ingest → validate →
features → Ray Train → evaluate → gate → register) with its summary.
"""

from __future__ import annotations

from pathlib import Path

import typer


def run_pipeline_only(source_uri, epochs, keep_ray, verbose) -> None:
    from kubeloop.local.pipelines import format_summary, run_training_pipeline
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


def demo(
    scenario: str = typer.Option(
        "covariate", help="drift scenario: covariate, concept, label_shift or stationary"
    ),
    duration: float = typer.Option(
        300.0, help="longest the scripted traffic runs, in seconds (the loop usually ends sooner)"
    ),
    rate: float = typer.Option(40.0, help="transactions per second sent through the router"),
    seed: int = typer.Option(0, help="seed of the data, the models and the traffic"),
    onset: float = typer.Option(40.0, help="seconds of traffic before the scenario starts"),
    quick: bool = typer.Option(
        False, "--quick", help="train v1 with plain torch instead of the kfp.local pipeline"
    ),
    online_features: bool = typer.Option(
        True,
        "--online-features/--no-online-features",
        help="callers send the request features and the account, the predictors look the "
        "account profile up in Feast's online store (off: callers send every feature)",
    ),
    report_dir: Path = typer.Option(
        Path("demo-report"), help="where index.html and summary.json go"
    ),
    home: Path = typer.Option(
        None, help="state of this run (default: $KUBELOOP_HOME/demo; removed at the next run)"
    ),
    pipeline_only: bool = typer.Option(
        False, "--pipeline-only", help="only run the training pipeline and print its summary"
    ),
    source_uri: str = typer.Option(
        None, help="--pipeline-only: data source (default: the built-in fraud example)"
    ),
    epochs: int = typer.Option(None, help="--pipeline-only: training epochs (default: settings)"),
    keep_ray: bool = typer.Option(
        False, "--keep-ray/--stop-ray", help="--pipeline-only: leave the local Ray head running"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="stream every stage's full log"),
) -> None:
    """Run the closed loop locally (drift → retrain → canary → promote → rollback) and report it."""
    if pipeline_only:
        run_pipeline_only(source_uri, epochs, keep_ray, verbose)
        return
    from rich.console import Console

    from kubeloop.demo.config import LoopConfig
    from kubeloop.demo.run import DemoError, run_demo
    from kubeloop.settings import get_settings

    try:
        config = LoopConfig(
            scenario=scenario, duration_seconds=duration, rate=rate, seed=seed,
            onset_seconds=onset, v1_trainer="quick" if quick else "pipeline",
            online_features=online_features,
        )  # fmt: skip
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console = Console()
    home = home or Path(get_settings().home) / "demo"
    with console.status("starting the local runtime") as live:
        try:
            summary = run_demo(
                config, home=home, report_dir=report_dir, echo=console.print,
                status=lambda line: live.update(line, spinner="dots"),
            )  # fmt: skip
        except DemoError as exc:
            console.print(f"[red]kubeloop demo failed:[/red] {exc}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("interrupted; the local runtime was stopped")
            raise typer.Exit(130) from None
    _print_summary(console, summary)
    console.print(f"report: {(report_dir / 'index.html').resolve()}")
    if not _shown(summary):
        raise typer.Exit(1)


def _shown(summary: dict) -> bool:
    """Did the run show what its scenario should show?"""
    if summary["scenario"] == "stationary":
        return summary["retraining_runs"] == 0 and summary["rollbacks"] == 0
    bad = summary.get("bad_candidate")
    return summary.get("update_cycle_seconds") is not None and (bad is None or bad["rolled_back"])


def _print_summary(console, summary: dict) -> None:
    def acc(key: str) -> str:
        value = summary.get(key) or {}
        return f"{value['accuracy']:.3f}" if value.get("accuracy") is not None else "-"

    def sec(value) -> str:
        return f"{value:.1f} s" if value is not None else "-"

    console.print(f"scenario {summary['scenario']}: "
                  f"{summary['traffic']['predictions']} predictions, "
                  f"{summary['traffic']['server_errors']} server errors")  # fmt: skip
    console.print(f"  detection delay   {sec(summary.get('detection_delay_seconds'))}")
    console.print(f"  update cycle      {sec(summary.get('update_cycle_seconds'))} "
                  f"(goal ≤ {summary['update_cycle_goal_seconds']:.0f} s)")  # fmt: skip
    console.print(f"  accuracy          before {acc('accuracy_before_drift')} · "
                  f"during drift {acc('accuracy_during_drift')} · "
                  f"after promotion {acc('accuracy_after_promotion')}")  # fmt: skip
    bad = summary.get("bad_candidate")
    if bad:
        console.print(f"  worse candidate   {bad['version']}: "
                      f"{'rolled back' if bad['rolled_back'] else 'NOT rolled back'} after "
                      f"{sec(bad['seconds_canary_to_rollback'])}, served "
                      f"{bad['predictions_served']} predictions "
                      f"(failed checks: {', '.join(bad['failed_checks']) or '-'})")  # fmt: skip
    if summary.get("retrained_window"):
        window = summary["retrained_window"]
        console.print(f"  retrained on      {window.get('start')} .. {window.get('end')} "
                      f"({summary.get('retrained_by')})")  # fmt: skip
    if store := summary.get("online_store"):
        console.print(f"  online features   {store['writes']} days of account snapshots written "
                      f"as the replay reached them, up to {store['written_until']} "
                      f"({len(store['errors'])} failed)")  # fmt: skip
    if summary["scenario"] != "stationary" and summary.get("detection_delay_seconds") is None:
        after = summary["traffic"]["duration_seconds"] - (summary.get("drift_onset_seconds") or 0)
        console.print(f"  [yellow]no drift detected[/yellow] in {after:.0f} s of traffic after "
                      "the onset (the demo watches the error rate of the delayed labels, which "
                      "label shift barely moves; see docs/benchmarks.md)")  # fmt: skip
    console.print(f"  retraining runs {summary['retraining_runs']}, "
                  f"rollbacks {summary['rollbacks']}")  # fmt: skip
