"""``python -m kubeloop.local.operator``: run the operator over the local runtime."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from kubeloop.operators.settings import load_operator_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kubeloop.local.operator", description=__doc__)
    parser.add_argument(
        "--apply", action="append", default=[], help="ModelDeployment YAML to apply first"
    )
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from prometheus_client import start_http_server

    from kubeloop.local.operator.driver import LocalOperator
    from kubeloop.local.supervisor import Supervisor
    from kubeloop.settings import get_settings

    settings = load_operator_settings()
    operator = LocalOperator(
        settings,
        supervisor=Supervisor(settings.state_dir.parent),
        registry_uri=get_settings().registry_uri,
        stage_server=get_settings().stage_server,  # predictors fork from it, as stages do
    )
    for path in args.apply:
        operator.store.apply(path)
    if args.once:
        operator.run_once()
        return
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="127.0.0.1")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    operator.run(stop)


if __name__ == "__main__":
    main()
