"""The warm stage server: pipeline stages forked from one process that imported their
libraries, run by the real kfp.local orchestrator on the real compiled pipeline.

The server is the one the local runtime starts (``python -m kubeloop.local.stages``
under a supervisor, session fixture ``stage_server``); the stages do their real work
(Feast, Ray Train on the session's head, the registry).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubeloop.pipelines.compile import COMPILED

from kubeloop.local.pipelines import run_training_pipeline
from kubeloop.local.stages import (
    TRAILER,
    StageServerError,
    lightweight_call,
    ping,
    run_stage,
)
from kubeloop.registry import ModelRegistry
from kubeloop.settings import get_settings

REPO = Path(__file__).resolve().parents[2]
TINY = "example://fraud/stationary?days=1&accounts=400&seed=0"

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture
def home(tmp_path, monkeypatch, ray_head):
    monkeypatch.setenv("KUBELOOP_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def _executors() -> dict[str, dict]:
    spec = next(
        doc
        for doc in yaml.safe_load_all((REPO / COMPILED["training"]).read_text())
        if doc and "deploymentSpec" in doc
    )
    return {
        name: executor["container"]
        for name, executor in spec["deploymentSpec"]["executors"].items()
    }


def test_every_stage_of_the_compiled_pipeline_is_a_lightweight_call():
    executors = _executors()
    assert len(executors) >= 8
    for name, container in executors.items():
        call = lightweight_call(container["command"] + container["args"])
        assert call is not None, name
        function = container["args"][container["args"].index("--function_to_execute") + 1]
        assert f"def {function}(" in call.program
        assert call.args[-2:] == ["--function_to_execute", function]


@pytest.mark.parametrize(
    "command",
    [
        ["python3", "-m", "kfp.dsl.executor_main", "--executor_input", "{}"],
        ["sh", "-c", "echo hello", "x"],
        # a lightweight component that installs packages first goes to a subprocess
        [
            "sh", "-c",
            'python3 -m pip install pandas && printf "%s" "$0" > "$p/ephemeral_component.py" '
            '&& python3 -m kfp.dsl.executor_main "$@"',
            "def f(): ...", "--function_to_execute", "f",
        ],
    ],
)  # fmt: skip
def test_other_commands_are_not_forked(command):
    assert lightweight_call(command) is None


def test_no_server_is_named(tmp_path):
    assert ping(tmp_path / "absent.sock") is None
    with pytest.raises(StageServerError, match="no stage server at .*absent.sock"):
        run_stage(tmp_path / "absent.sock", ["sh", "-c", "true"])


def test_the_server_refuses_what_is_not_a_stage(stage_server):
    info = ping(stage_server)
    assert info and "torch" in info["preloaded"] and "feast" in info["preloaded"]
    assert "torch._dynamo" in info["preloaded"]  # what torch's first optimizer imports
    # the server answers itself (a thread per connection), naming its own process
    assert b"kubeloop.local.stages" in Path(f"/proc/{info['pid']}/cmdline").read_bytes()
    for request in (b"not json\n", json.dumps({"argv": ["sh", "-c", "id", "x"]}).encode() + b"\n"):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(stage_server))
            sock.sendall(request)
            reply = sock.makefile("rb").read()
        assert reply.endswith(TRAILER + b"2\n")
        assert b"kubeloop stage server:" in reply
    assert (stage_server.stat().st_mode & 0o777) == 0o600


def test_a_stage_exit_skips_the_imports_finalizers_and_runs_its_own(tmp_path):
    """What the server registered before serving is quieted; what a stage registers after
    (a temporary folder of its own) is still cleaned up when the stage exits."""
    script = f"""
import atexit, os, tempfile, weakref
from kubeloop.local.stages import _quiet_import_finalizers
class Held: pass
held = Held()
early = weakref.finalize(held, print, "early finalizer ran")
assert _quiet_import_finalizers() >= 1 and not early.atexit
pid = os.fork()
if pid == 0:
    own = tempfile.TemporaryDirectory(dir={str(tmp_path)!r})
    atexit._run_exitfuncs()
    os._exit(0)
os.waitpid(pid, 0)
os._exit(0)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "early finalizer ran" not in out.stdout
    assert list(tmp_path.iterdir()) == []  # the stage's own folder was removed at its exit


def test_a_run_forks_every_stage_from_the_server(home, stage_server, monkeypatch, capsys):
    monkeypatch.setenv("KUBELOOP_STAGE_SERVER", str(stage_server))
    get_settings.cache_clear()
    result = run_training_pipeline(source_uri=TINY, epochs=2, batch_size=64)
    assert result.succeeded, result.error
    assert result.stage_runner == "warm" and result.version == "v1"
    assert f"stages forked from the warm stage server at {stage_server}" in capsys.readouterr().out
    ran = {s.name: s.status for s in result.stages}
    assert set(ran) >= {"ingest", "validate", "features", "train", "evaluate", "gate", "register"}
    assert set(ran.values()) == {"SUCCESS"}
    log = result.log_file.read_text()
    # Each stage's program was written by the server (the shell's would be mktemp's tmp.*)
    assert log.count("/kubeloop-stage-") >= len(ran)
    assert "[train] epoch 2/2" in log
    version = ModelRegistry(get_settings().registry_uri).get(result.model_name, "v1")
    assert version.lineage["pipeline_run_id"] == result.run_id


def test_a_failing_stage_reports_its_own_error_warm_or_not(home, stage_server, tmp_path, capsys):
    from kubeloop.data.fraud import generate

    data = generate("stationary", days=1, n_accounts=50, seed=3)
    data.transactions = data.transactions.drop(columns=["amount"])
    data.write(tmp_path / "bad")
    results = {
        "warm": run_training_pipeline(source_uri=str(tmp_path / "bad"), stage_server=stage_server),
        "subprocess": run_training_pipeline(
            source_uri=str(tmp_path / "bad"), stage_server=tmp_path / "absent.sock"
        ),
    }
    assert f"no stage server answers at {tmp_path / 'absent.sock'}" in capsys.readouterr().out
    for runner, result in results.items():
        assert result.stage_runner == runner
        assert not result.succeeded and result.failed_stage == "ingest"
        assert "missing columns ['amount']" in result.error, result.error
    assert not (home / "registry").exists() or not any((home / "registry").rglob("*.pt"))
    assert not (home / "registry").exists()  # nothing was written to the registry at all


# --- predictors forked from the server -----------------------------------------------------

MODEL = "fraud-detector"
REQUEST = {"amount": 300.0, "merchant_category": "travel", "hour": 3,
           "distance_from_home_km": 90.0, "is_foreign": 1, "txn_count_1h": 3}  # fmt: skip


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    """A registry version and the Feast online store its entity-key requests read."""
    from datetime import UTC, datetime, timedelta

    from kubeloop.data import fraud
    from kubeloop.features.store import prepare_feature_store
    from kubeloop.training.quick import publish_quick_version

    root = tmp_path_factory.mktemp("serving")
    start = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0)
    data = fraud.generate("stationary", start=start, days=2, n_accounts=20, seed=4)
    prepare_feature_store(root / "store", data.accounts)
    registry = ModelRegistry(str(root / "registry"))
    publish_quick_version(registry, MODEL, seed=4)
    return {"root": root, "registry": registry, "store": root / "store", "accounts": data.accounts}


def _forked_predictor(sup, serving, stage_server, version="v1", **options):
    from kubeloop.local.servers import start_predictor

    return start_predictor(sup, MODEL, version, serving["registry"].uri,
                           feast_repo=serving["store"], stage_server=stage_server,
                           **options)  # fmt: skip


def _listener(port: int):
    import psutil

    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return psutil.Process(conn.pid)
    return None


def test_a_predictor_forks_from_the_server_and_stops_with_its_client(
    serving, stage_server, tmp_path
):
    import httpx
    import psutil

    from kubeloop.local.supervisor import Supervisor
    from kubeloop.model import ModelBundle

    server_pid = ping(stage_server)["pid"]
    with Supervisor(tmp_path / "runtime") as sup:
        service = _forked_predictor(sup, serving, stage_server)
        child = _listener(service.ports["http"])
        # the process answering is the server's child; the supervisor's is the thin client
        assert child is not None and child.ppid() == server_pid and child.pid != service.pid
        cmdline = psutil.Process(service.pid).cmdline()
        assert cmdline[cmdline.index("--service") + 1] == "predictor"
        account = int(serving["accounts"]["account_id"].iloc[0])
        resp = httpx.post(f"{service.url}/v1/models/{MODEL}:predict",
                          json={"instances": [{**REQUEST, "account_id": account}]})  # fmt: skip
        assert resp.status_code == 200, resp.text
        profile = serving["accounts"][serving["accounts"]["account_id"] == account]
        row = profile.sort_values("event_timestamp").iloc[-1]
        _, folder = serving["registry"].download(MODEL, "v1", tmp_path / "v1")
        bundle = ModelBundle.load(folder)
        full = {**REQUEST, **{c.name: float(row[c.name]) for c in bundle.schema.view_features}}
        import pandas as pd

        score = bundle.predict(pd.DataFrame([full]))[0][0]
        assert resp.json()["predictions"][0]["score"] == pytest.approx(score, rel=1e-6)
        # the request guard was installed on the forked child's own app
        bad = httpx.post(f"{service.url}/v1/models/{MODEL}:predict", json={"instances": [{}]})
        assert bad.status_code == 400
        # it shares the server's imports: the server froze them before forking, so the
        # child's collections do not copy their pages (unfrozen: about 30 % of the server)
        server_rss = psutil.Process(server_pid).memory_info().rss
        assert child.memory_full_info().uss < 0.15 * server_rss
        assert service.stop()
        psutil.wait_procs([child], timeout=15)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert ping(stage_server)["pid"] == server_pid  # the server serves on


def test_a_killed_client_takes_its_predictor_down(serving, stage_server, tmp_path):
    import psutil

    from kubeloop.local.supervisor import Supervisor

    with Supervisor(tmp_path / "runtime") as sup:
        service = _forked_predictor(sup, serving, stage_server)
        child = _listener(service.ports["http"])
        assert child is not None
        psutil.Process(service.pid).kill()  # no stop: the connection closes with the client
        gone, _ = psutil.wait_procs([child], timeout=15)
        assert gone, "the forked predictor outlived its client"


def test_a_predictor_that_cannot_load_exits_with_its_own_error(serving, stage_server, tmp_path):
    from kubeloop.local.supervisor import Supervisor
    from kubeloop.local.wait import wait_until

    with Supervisor(tmp_path / "runtime") as sup:
        service = _forked_predictor(sup, serving, stage_server, version="v9", wait=False)
        wait_until(lambda: not service.running(), timeout=30, interval=0.2,
                   what="the client to exit")  # fmt: skip
        assert service.exit_status() not in (None, 0)
        assert "cannot load the model" in service.log()
        assert "v9" in service.log()


def test_with_no_server_the_client_runs_the_predictor_cold(serving, tmp_path):
    from kubeloop.local.supervisor import Supervisor

    absent = tmp_path / "absent.sock"
    with Supervisor(tmp_path / "runtime") as sup:
        service = _forked_predictor(sup, serving, absent, timeout=120)
        assert _listener(service.ports["http"]).pid == service.pid  # the client itself
        assert f"no stage server at {absent}" in service.log()
        assert "starting predictor in this process" in service.log()


def test_the_server_forks_only_the_services_it_knows(stage_server, capsys):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(stage_server))
        sock.sendall(json.dumps({"service": "shell", "args": ["-c", "id"]}).encode() + b"\n")
        reply = sock.makefile("rb").read()
    assert reply.endswith(TRAILER + b"2\n")
    assert b"no service 'shell'" in reply
    out = subprocess.run(
        [sys.executable, "-m", "kubeloop.local.stages", "--socket", str(stage_server),
         "--service", "shell"], capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2 and "invalid choice: 'shell'" in out.stderr
