"""Entry point of the ``kubeloop`` command: one typer app, one sub-app per concern."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="kubeloop",
    help="kubeloop: data → features → training → gate → registry → canary → monitoring → again.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _register() -> None:
    # Sub-apps import their heavy dependencies lazily inside commands, so `--help` stays fast.
    from kubeloop.cli import demo, generate, pipeline, registry

    app.add_typer(registry.app, name="registry")
    app.add_typer(pipeline.app, name="pipeline")
    app.command(name="demo")(demo.demo)
    app.command(name="generate")(generate.generate)
    from kubeloop.cli import serve

    app.command(name="serve")(serve.serve)
    app.command(name="predict")(serve.predict)
    from kubeloop.cli import rollout

    app.add_typer(rollout.app, name="rollout")
    from kubeloop.cli import runtime

    app.command(name="up")(runtime.up)
    app.command(name="down")(runtime.down)
    from kubeloop.monitoring import cli as monitoring

    app.add_typer(monitoring.app, name="monitoring")


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
