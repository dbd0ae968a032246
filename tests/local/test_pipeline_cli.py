"""``kubeloop pipeline``: compile, argument errors, and submission to a KFP API.

The ``--host`` path is tested at the client boundary: the real ``kfp.Client`` talks to a
small HTTP server on 127.0.0.1 that records each request and answers like the KFP v2beta1
API, so what kubeloop sends (the compiled pipeline spec and its arguments) is checked.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from typer.testing import CliRunner

from kubeloop.cli.main import _register, app

_register()
runner = CliRunner()


class _RecordingKfpApi(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.requests.append({"method": self.command, "path": self.path, "body": body})
        path = self.path.split("?")[0]
        if path.endswith("/experiments") and self.command == "GET":
            reply = {"experiments": [{"experiment_id": "exp-1", "display_name": "kubeloop"}]}
        elif path.endswith("/experiments"):
            reply = {"experiment_id": "exp-1", "display_name": "kubeloop"}
        elif path.endswith("/runs") and self.command == "POST":
            reply = {"run_id": "run-42", "display_name": "r", "state": "PENDING"}
        else:
            reply = {}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def kfp_api():
    _RecordingKfpApi.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingKfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _RecordingKfpApi.requests
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_run_host_submits_the_compiled_pipeline(kfp_api):
    host, requests = kfp_api
    result = runner.invoke(
        app, ["pipeline", "run", "training", "--host", host, "--epochs", "3", "--seed", "11"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["run_id"] == "run-42"
    runs = [
        r for r in requests if r["method"] == "POST" and r["path"].split("?")[0].endswith("/runs")
    ]
    assert len(runs) == 1
    body = json.loads(runs[0]["body"])
    assert body["experiment_id"] == "exp-1"
    # With a platform spec (the storage environment) kfp sends both documents.
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "kubeloop-training"
    assert "kubernetes" in body["pipeline_spec"]["platform_spec"]["platforms"]
    params = body["runtime_config"]["parameters"]
    assert params["epochs"] == 3 and params["seed"] == 11
    assert params["source_uri"].startswith("example://fraud/")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pipeline", "run", "training"], "exactly one of --local or --host"),
        (["pipeline", "run", "training", "--local", "--host", "http://x"], "exactly one"),
        (["pipeline", "run", "nope", "--local"], "unknown pipeline 'nope'"),
    ],
)
def test_run_argument_errors(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert message in result.output


def test_compile_writes_ir(tmp_path):
    result = runner.invoke(app, ["pipeline", "compile", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    spec, platform = yaml.safe_load_all((tmp_path / "training.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == "kubeloop-training"
    assert "kubernetes" in platform["platforms"]


def test_compile_takes_the_release_names(tmp_path):
    result = runner.invoke(
        app,
        ["pipeline", "compile", "--output", str(tmp_path), "--s3-secret", "team-s3"],
        env={"KUBELOOP_IMAGE_REGISTRY": "registry.example.com/ml"},
    )
    assert result.exit_code == 0, result.output
    spec, platform = yaml.safe_load_all((tmp_path / "training.yaml").read_text())
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert all(ref.startswith("registry.example.com/ml/kubeloop-") for ref in images), images
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {e["secretAsEnv"][0]["secretName"] for e in executors.values()} == {"team-s3"}


def test_compile_refuses_an_unusable_name(tmp_path):
    result = runner.invoke(
        app, ["pipeline", "compile", "--output", str(tmp_path), "--s3-secret", "Bad_Name"]
    )
    assert result.exit_code != 0
    assert "s3_secret" in result.output


def test_compile_takes_the_ray_cluster_address(tmp_path):
    address = "ray://kl-kubeloop-ray-head-svc.ml.svc.cluster.local:10001"
    args = ["pipeline", "compile", "--output", str(tmp_path), "--ray-address", address]
    assert runner.invoke(app, args).exit_code == 0
    pipeline = next(yaml.safe_load_all((tmp_path / "training.yaml").read_text()))
    env = pipeline["deploymentSpec"]["executors"]["exec-train"]["container"]["env"]
    assert env == [{"name": "KUBELOOP_RAY_ADDRESS", "value": address}]
    refused = runner.invoke(app, [*args[:-1], "kl-kubeloop-ray-head-svc:6379"])
    assert refused.exit_code != 0 and "ray_address must be a Ray Client address" in refused.output


def _out_of_range_hour(data, folder):
    data.transactions.loc[0:5, "hour"] = 42  # validation stops the run before training
    data.write(folder)


def _missing_amount(data, folder):
    data.write(folder)
    data.transactions.drop(columns=["amount"]).to_parquet(folder / "transactions.parquet")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spoil", "stage", "message"),
    [
        (
            _out_of_range_hour,
            "validate",
            "DataValidationError: data validation failed: schema (transactions) [hour]: "
            "failed less_than_or_equal_to(23.0)",
        ),
        (_missing_amount, "ingest", "SourceError: source {src}: missing columns ['amount']"),
    ],
)
def test_run_local_reports_a_failed_stage(spoil, stage, message, tmp_path, monkeypatch):
    from kubeloop.data.fraud import generate
    from kubeloop.settings import get_settings

    monkeypatch.setenv("KUBELOOP_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    spoil(generate("stationary", days=2, n_accounts=80, seed=3), tmp_path / "bad")
    try:
        result = runner.invoke(
            app, ["pipeline", "run", "training", "--local", "--source-uri", str(tmp_path / "bad")]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert f"✘ {stage}" in result.output
    assert "FAILED" in result.output
    # the stage's own message, not kfp's "Inner task failed"
    assert f"failed stage: {stage} — {message.format(src=tmp_path / 'bad')}" in result.output
    if stage == "validate":  # where the report of every check is
        reports = list((tmp_path / "home" / "runs").glob("*/validate/report"))
        assert len(reports) == 1 and f"validation: {reports[0]}" in result.output
    assert not (tmp_path / "home" / "registry").exists()
