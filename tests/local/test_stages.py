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
