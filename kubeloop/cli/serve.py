"""``kubeloop serve`` (a predictor in the foreground) and ``kubeloop predict`` (one request)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def serve(
    version: str = typer.Argument("champion", help="version (v<N>), alias (champion) or 'latest'"),
    model: str = typer.Option(None, help="model name (default: settings.model_name)"),
    registry_uri: str = typer.Option(None, help="registry (default: settings.registry_uri)"),
    port: int = typer.Option(8080, help="REST port (V1, V2, /metrics)"),
    grpc_port: int = typer.Option(8081, help="gRPC port (Open Inference Protocol)"),
    logger_url: str = typer.Option(
        None, help="CloudEvents payload receiver (e.g. the drift service)"
    ),
    feast_repo: Path = typer.Option(None, help="prepared Feast store for entity-key requests"),
    max_batch: int = typer.Option(256, help="most instances per request"),
    max_payload_bytes: int = typer.Option(
        None, help="largest request body (default: 1 MiB, or 1 KiB per --max-batch row if more)"
    ),
    body_timeout: float = typer.Option(30.0, help="seconds for a request body to arrive whole"),
) -> None:
    """Serve a registry version locally with kserve until interrupted."""
    from kubeloop.serving.predictor import main as predictor_main
    from kubeloop.settings import get_settings

    settings = get_settings()
    args = [
        "--model_name", model or settings.model_name,
        "--version", version,
        "--registry-uri", registry_uri or settings.registry_uri,
        "--http_port", str(port),
        "--grpc_port", str(grpc_port),
        "--max-batch", str(max_batch),
        "--body-timeout", str(body_timeout),
    ]  # fmt: skip
    if max_payload_bytes is not None:
        args += ["--max-payload-bytes", str(max_payload_bytes)]
    if logger_url:
        args += ["--logger-url", logger_url]
    if feast_repo:
        args += ["--feast-repo", str(feast_repo)]
    typer.echo(
        f"serving {args[1]} {version} on http://127.0.0.1:{port} (gRPC {grpc_port}); Ctrl-C stops"
    )
    predictor_main(args)


def predict(
    instance: list[str] = typer.Argument(None, help="feature=value pairs of one instance"),
    url: str = typer.Option("http://127.0.0.1:8080", help="predictor or router base URL"),
    model: str = typer.Option(None, help="model name (default: settings.model_name)"),
    file: Path = typer.Option(
        None, "--file", "-f", help="JSON body ({'instances': [...]}) to send"
    ),
    key: str = typer.Option(None, help="stickiness key (X-Kubeloop-Key) for the router"),
) -> None:
    """Send one V1 prediction request and print the response."""
    import httpx

    from kubeloop.settings import get_settings

    model = model or get_settings().model_name
    if file:
        try:
            body = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise typer.BadParameter(f"cannot read a JSON body from {file}: {exc}") from None
    elif instance:
        row = {}
        for pair in instance:
            name, sep, raw = pair.partition("=")
            if not sep or not name:
                raise typer.BadParameter(f"expected feature=value, got {pair!r}")
            try:
                row[name] = json.loads(raw)
            except json.JSONDecodeError:
                row[name] = raw  # a bare string such as merchant_category=grocery
        body = {"instances": [row]}
    else:
        raise typer.BadParameter("give feature=value pairs or --file")
    headers = {"x-kubeloop-key": key} if key else {}
    try:
        resp = httpx.post(
            f"{url.rstrip('/')}/v1/models/{model}:predict", json=body, headers=headers, timeout=30
        )
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(resp.json() if resp.content else {}, indent=2))
    if resp.status_code >= 400:
        raise typer.Exit(1)
