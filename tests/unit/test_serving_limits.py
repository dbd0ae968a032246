"""The predictor's request limits as the command lines set them (kubeloop serve, python -m)."""

from __future__ import annotations

import inspect

from typer.testing import CliRunner

from kubeloop.serving.predictor import predictor_limits
from kubeloop.serving.server import predictor_parser


def _limits(*extra: str):
    return predictor_limits(predictor_parser().parse_args(["--model_name", "m", *extra]))


def test_defaults_are_the_documented_ones():
    limits = _limits()
    assert limits.max_batch == 256 and limits.max_payload_bytes == 1_048_576
    assert limits.max_request_id_chars == 128 and limits.body_timeout_s == 30.0


def test_the_body_limit_follows_a_raised_batch_limit():
    # A V1 row is ~220 bytes of JSON: 100k rows must fit under the derived limit.
    assert _limits("--max-batch", "100000").max_payload_bytes >= 100_000 * 400


def test_explicit_limits_win():
    limits = _limits("--max-batch", "100000", "--max-payload-bytes", "5000",
                     "--body-timeout", "2.5", "--max-request-id-chars", "64")  # fmt: skip
    assert limits.max_payload_bytes == 5000 and limits.body_timeout_s == 2.5
    assert limits.max_request_id_chars == 64


def test_kubeloop_serve_exposes_the_limits():
    from kubeloop.cli.main import _register, app

    _register()
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for flag in ("--max-batch", "--max-payload-bytes", "--body-timeout"):
        assert flag in result.output


def test_kserve_takes_its_flags_from_the_predictor_command_line(monkeypatch):
    """kserve parsed sys.argv at import, which a predictor forked from the warm server
    imported under that server's command line: the predictor's own flags must win."""
    import kserve.model_server

    from kubeloop.serving.server import kserve_options

    monkeypatch.setattr(kserve.model_server, "args", kserve.model_server.args)  # restored after
    args = predictor_parser().parse_args(
        ["--model_name", "m", "--http_port", "9001", "--timeout-keep-alive", "7",
         "--configure_logging", "false", "--enable_grpc", "false"]
    )  # fmt: skip
    options = kserve_options(args)
    assert options["http_port"] == 9001 and options["timeout_keep_alive"] == 7
    assert options["enable_grpc"] is False
    assert kserve.model_server.args is args and args.configure_logging is False
    assert set(options) <= set(inspect.signature(kserve.model_server.ModelServer).parameters)
