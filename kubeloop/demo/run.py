"""``kubeloop demo``: the closed loop on the local runtime, measured and drawn.

Starts the runtime (``LocalRuntime``), trains v1 (the kfp.local training pipeline, or
plain torch with ``v1_trainer="quick"``), hands a ``ModelDeployment`` to the operator,
replays traffic with delayed labels and the scenario at a known time, lets the loop
react (drift → retraining run on the recent window → canary → promotion), offers a
worse candidate that the canary analysis must roll back, then writes the report. The
runtime is stopped on every exit path, Ctrl-C included.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import yaml

from kubeloop.contracts.payload_events import DETECTORS
from kubeloop.demo.config import LoopConfig
from kubeloop.demo.online import DemoOnlineStore
from kubeloop.demo.report import TIMELINE_DECISIONS, write_report
from kubeloop.demo.retrain import LABELLED_FILE
from kubeloop.demo.stream import build_stream
from kubeloop.demo.timeline import Recorder
from kubeloop.demo.traffic import TrafficReplayer
from kubeloop.local.runtime import (
    DEMO_CLASS_ERT,
    DEMO_DRIFT_DETECTORS,
    DEMO_ERRORS_ERT,
    DEMO_ERT,
    LocalRuntime,
    RuntimePorts,
)
from kubeloop.local.wait import wait_until
from kubeloop.operators.reconciler.types import RunObservation, RunState, SubmitRun

MODEL = "fraud-detector"
MARKER = ".kubeloop-demo"
STAGES_READY_S = 120.0  # the stage server's imports, while the runtime's other parts start
# Each family's ERT in the demo (DEMO_DRIFT_DETECTORS): inputs and scores in predictions,
# the error rate in labels, the predicted class in predictions.
DEMO_DETECTOR_ERTS = {
    **dict.fromkeys(("mmd", "cvm", "fet", "prediction"), DEMO_ERT),
    "error_rate": DEMO_ERRORS_ERT,
    "predicted_class": DEMO_CLASS_ERT,
}
# What the operator's local run job calls: the training pipeline on the labelled window.
RUNNER = "kubeloop.demo.retrain_pipeline:retrain_with_pipeline"


class DemoError(RuntimeError):
    """The loop did not get where it had to (the message says where it stopped)."""


def deployment_manifest(config: LoopConfig, runtime: LocalRuntime, labelled: Path) -> dict:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL},
        "spec": {
            "model": {"name": MODEL, "registryUri": str(runtime.registry_uri)},
            "serving": {"loggerUrl": runtime.url("drift")},
            "rollout": {
                "steps": list(config.steps),
                "minSamples": config.min_samples,
                "minStepSeconds": config.min_step_seconds,
                "maxStepSeconds": config.max_step_seconds,
                "watchWindowSeconds": config.watch_window_seconds,
                "analysis": {
                    # two shared cores: latency is noisy, judge it loosely
                    "latencyP99Tolerance": 3.0,
                    "latencyP99SlackSeconds": 0.25,
                    "maxErrorRateIncrease": 0.05,
                    # a version retrained on shifted inputs (and here by another trainer than
                    # v1's pipeline) moves its scores by design; a broken one moves them more
                    "maxScoreShift": 0.5,
                    "maxAccuracyDrop": config.max_accuracy_drop,
                    "minFeedback": config.min_feedback,
                },
            },
            "monitoring": {
                # what the drift service runs (DEMO_DRIFT_DETECTORS): by default every
                # family, the inputs and scores (covariate drift), the error rate of the
                # delayed labels (covariate and concept drift) and the share of positive
                # predictions (label shift)
                "detectors": [
                    {"name": name, "ert": DEMO_DETECTOR_ERTS[name]}
                    for name in config.detectors or DETECTORS
                ],
                "driftDurationSeconds": config.drift_duration_seconds,
                # label shift, sustained, by default retrains on the fresh window (the new
                # prior); Recalibrate moves the stable version's threshold for it instead
                "labelShift": {"action": config.label_shift_action},
            },
            "retraining": {
                "pipeline": {"name": RUNNER},
                "parameters": {
                    "labelled_traffic": str(labelled),
                    "window": "fresh",  # learn from traffic labelled after the drift
                    "seed": str(config.seed + 1),
                    "epochs": str(config.pipeline_epochs),
                    "batch_size": str(config.pipeline_batch_size),
                    "members": str(config.pipeline_members),
                },
                "dataWindow": f"{config.data_window_seconds}s",
                **(
                    {"conceptDataWindow": f"{config.concept_data_window_seconds}s"}
                    if config.concept_data_window_seconds is not None
                    else {}
                ),
                "replayFraction": config.replay_fraction,
                "conceptReplayFraction": config.concept_replay_fraction,
                "distillWeight": config.distill_weight,
                "cooldownSeconds": 120,
                "maxAttempts": 2,
                "backoffSeconds": 5,
            },
        },
    }


def _fresh_home(home: Path) -> None:
    if home.exists():
        if not (home / MARKER).exists() and any(home.iterdir()):
            raise DemoError(f"{home} exists and is not a demo folder; choose another --home")
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / MARKER).write_text("state of one `kubeloop demo` run; removed by the next one\n")


def train_first_version(config: LoopConfig, runtime: LocalRuntime, echo: Callable) -> str:
    from kubeloop.registry import ModelRegistry

    if config.v1_trainer == "quick":
        from kubeloop.training.quick import publish_quick_version

        version = publish_quick_version(
            ModelRegistry(str(runtime.registry_uri)), MODEL, seed=config.v1_seed,
            n_accounts=config.v1_accounts, days=config.v1_days,
        )  # fmt: skip
        return version.version
    from kubeloop.local.pipelines import format_summary, run_training_pipeline
    from kubeloop.local.stages import ping

    if runtime.warm_stages:  # the stage server imports in ~15 s what every stage would
        wait_for("the stage server", lambda: ping(runtime.stage_socket), STAGES_READY_S, 0.5)
    result = run_training_pipeline(
        source_uri=config.v1_source, model_name=MODEL, registry_uri=str(runtime.registry_uri),
        epochs=3, echo=echo, stage_server=runtime.stage_socket if runtime.warm_stages else None,
    )  # fmt: skip
    echo(format_summary(result))
    if not result.succeeded or not result.version:
        raise DemoError(f"training v1 failed: {result.error or 'the gate did not pass'}")
    return result.version


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    try:
        return wait_until(predicate, timeout=timeout, interval=every, what=what)
    except TimeoutError as exc:
        raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}") from exc


def _answers_record(replayer: TrafficReplayer) -> list[dict]:
    return [
        {
            "sent_at": a.sent_at,
            "version": a.version,
            "role": a.role,
            "status": a.status,
            "n": len(a.predicted),
            "correct": a.correct,
            "labelled": a.labelled_at is not None,
        }  # fmt: skip
        for a in replayer.answers
    ]


def _live_accuracy(replayer: TrafficReplayer, last: int = 60) -> dict[str, float]:
    by_version: dict[str, list[int]] = {}
    for a in [a for a in replayer.answers[-400:] if a.labelled_at][-last:]:
        cell = by_version.setdefault(a.version or "?", [0, 0])
        cell[0] += a.correct
        cell[1] += len(a.predicted)
    return {v: c / n for v, (c, n) in by_version.items() if n}


def status_line(sample: dict[str, Any], replayer: TrafficReplayer, t0: float) -> str:
    split = f"{sample.get('split_stable') or '-'}"
    if sample.get("split_canary"):
        pct = float(sample["canary_percent"])
        split += f" {100 - pct:.0f}% / {sample['split_canary']} {pct:.0f}%"
    else:
        split += " 100%"
    drift = ", ".join(
        f"{d['detector']} {d['statistic']:.3g}/{(d['threshold'] or float('nan')):.3g}"
        for d in sample.get("drift", [])
        if d["version"] == sample.get("stable_version")
    )
    acc = ", ".join(f"{v} {a:.3f}" for v, a in sorted(_live_accuracy(replayer).items()))
    return (
        f"[{time.time() - t0:5.0f}s] phase {sample.get('phase')} · split {split} · "
        f"drift {sample.get('drift_state')} ({drift or 'no statistic yet'}) · accuracy {acc or '-'}"
    )


def run_demo(
    config: LoopConfig,
    *,
    home: Path,
    report_dir: Path,
    echo: Callable[[str], None] = print,
    status: Callable[[str], None] | None = None,
    max_seconds: float = 560.0,
    drift_cache: Path | None = None,
) -> dict[str, Any]:
    """Runs the loop once and writes the report; returns the summary."""
    started = time.monotonic()
    home = Path(home).resolve()
    _fresh_home(home)
    labelled = home / "loop" / LABELLED_FILE
    feast_store = home / "feast" / "online"
    operator_env = {
        "KUBELOOP_OPERATOR_POLL_INTERVAL_SECONDS": str(config.poll_interval_seconds),
        "KUBELOOP_OPERATOR_MIN_WINDOW_SECONDS": "4",
        "KUBELOOP_OPERATOR_LOCAL_RUNNER": RUNNER,
    }
    if config.online_features:
        operator_env["KUBELOOP_OPERATOR_FEAST_STORE"] = str(feast_store)
    runtime = LocalRuntime(
        home,
        RuntimePorts.free(),
        operator_env=operator_env,
        drift_env=DEMO_DRIFT_DETECTORS,
        # calibrated thresholds survive the next run's fresh home
        drift_cache=Path(drift_cache) if drift_cache else home.parent / "drift-cache",
        # pipeline runs (v1's, retraining runs) fork their stages from the stage server
        warm_stages=True,
    )
    status = status or (lambda line: None)
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on SIGTERM too
    replayer: TrafficReplayer | None = None
    recorder: Recorder | None = None
    online: DemoOnlineStore | None = None
    online_record: dict = {}
    ray_started = False
    retrain_head = False  # a Ray head under the runtime's home, for pipeline retraining runs
    try:
        echo(f"kubeloop demo: scenario {config.scenario}, {config.rate:g} transactions/s, "
             f"seed {config.seed}; runtime state and logs under {home / 'runtime'}")  # fmt: skip
        runtime.start([])
        echo("runtime up: " + ", ".join(f"{n} {part}" for n, part in runtime.status().items()))  # fmt: skip
        from kubeloop.training.ray_runtime import read_head, stop_local_head

        ray_running = read_head() is not None
        # The customers v1 learned from (the account population of its data), with
        # transactions of their own: a model serves the customer base it was trained on, and
        # with a few hundred accounts another population's per-account features (account
        # age, 30-day average amount) differ enough for the input detectors to see.
        stream = build_stream(
            config.scenario, rate=config.rate, onset_seconds=config.onset_seconds,
            duration_seconds=config.duration_seconds, seed=config.seed,
            n_accounts=config.stream_accounts, population_seed=config.v1_seed,
        )  # fmt: skip
        preparing = None
        if config.online_features:
            online = DemoOnlineStore(feast_store, stream)
            # feast apply and the first materialization, while v1 trains
            pool = ThreadPoolExecutor(1, thread_name_prefix="feast-prepare")
            preparing = pool.submit(online.prepare)
            pool.shutdown(wait=False)
        first = train_first_version(config, runtime, echo)
        ray_started = not ray_running and read_head() is not None
        if ray_started:
            stop_local_head()
            ray_started = False
        echo(f"registered {MODEL} {first}")
        from kubeloop.settings import get_settings
        from kubeloop.training.ray_runtime import in_process_eligible, start_local_head

        training = get_settings().training
        if not in_process_eligible(training.num_workers, training.use_gpu):
            # Started now, so a retraining run joins a warm head instead of starting one
            # (about 10 s on two cores); the run jobs find it under the runtime's home. One
            # CPU worker trains in its stage's own process (Ray Train's local mode).
            retrain_head = True
            start_local_head(runtime.home)
        if online is not None:
            preparing.result()
            online.start(runtime.prometheus_root)
            echo(f"Feast online store ready at {online.first_day:%Y-%m-%d} (account profiles "
                 "looked up by the predictors, one day of snapshots written as each day comes)")  # fmt: skip
        manifest = home / f"{MODEL}.yaml"
        manifest.write_text(yaml.safe_dump(deployment_manifest(config, runtime, labelled)))
        runtime.apply(manifest)
        recorder = Recorder(MODEL, MODEL, runtime.state_dir, runtime.url("router"),
                            runtime.url("prometheus"))  # fmt: skip
        wait_for(f"{first} serving through the router",
                 lambda: (recorder.split() or {}).get("stable", {}).get("version") == first, 120)  # fmt: skip
        wait_for(f"the drift service watching {first}", lambda: _watching(runtime, first), 120, 1)
        echo(f"{first} deployed through ModelDeployment {MODEL}; drift service watching it")
        replayer = TrafficReplayer(
            stream, runtime.url("router"), runtime.url("drift"), MODEL, rate=config.rate,
            batch=config.batch, label_delay=config.label_delay_seconds, labelled_path=labelled,
            online_features=online is not None, on_day=online.advance if online else None,
        )  # fmt: skip
        recorder.start()
        replayer.start()
        _drive(config, runtime, replayer, recorder, first, echo, status, started, max_seconds)
    finally:
        if replayer is not None:
            replayer.stop()
        if recorder is not None:
            recorder.stop()
        if online is not None:
            online_record = online.close()
        stopped = runtime.stop()
        echo(f"runtime stopped ({len(stopped)} processes)")
        from kubeloop.training.ray_runtime import stop_local_head

        if ray_started:
            stop_local_head()
        if retrain_head:
            stop_local_head(runtime.home)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    record = {
        "config": config.to_dict(),
        "started_at": replayer.started_at,
        "onset_at": replayer.onset_at if config.scenario != "stationary" else None,
        "first_version": first,
        "answers": _answers_record(replayer),
        "samples": recorder.samples,
        # how many of a version's latest predictions its accuracy estimate reads
        "estimate_rows": int(DEMO_DRIFT_DETECTORS["accuracy_window"]),
        "decisions": recorder.decisions(),
        "marks": recorder.marks,
        "bad_candidate": recorder.bad_candidate,
        "scenario_description": stream.description,
        "lineage": _lineages(runtime, first),
        "online_store": online_record,
    }
    summary = write_report(record, report_dir)
    echo(f"report: {Path(report_dir).resolve() / 'index.html'}")
    return summary


def _lineages(runtime: LocalRuntime, first: str) -> dict[str, dict]:
    """Lineage of every version registered after v1 (which trainer, which window)."""
    from kubeloop.registry import ModelRegistry

    registry = ModelRegistry(str(runtime.registry_uri))
    return {v.version: v.lineage for v in registry.list_versions(MODEL) if v.version != first}


def _watching(runtime: LocalRuntime, version: str) -> bool:
    try:
        body = httpx.get(f"{runtime.url('drift')}/v1/status", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return any(m.get("version") == version for m in _monitors(body))


def _monitors(body: Any) -> list[dict]:
    if isinstance(body, dict):
        for key in ("watched", "monitors", "versions"):
            if isinstance(body.get(key), list):
                return body[key]
            if isinstance(body.get(key), dict):
                return list(body[key].values())
    return body if isinstance(body, list) else []


def _drive(config, runtime, replayer, recorder, first, echo, status, started, max_seconds) -> None:
    """Watches the loop until it has shown what the scenario should show, or time runs out."""
    seen = 0
    recorder.bad_candidate = None
    onset_marked = False
    offered: threading.Thread | None = None
    while True:
        time.sleep(1.0)
        sample = recorder.samples[-1] if recorder.samples else recorder.sample()
        status(status_line(sample, replayer, replayer.started_at or time.time()))
        decisions = recorder.decisions()
        for d in decisions[seen:]:
            if d["decision"] in TIMELINE_DECISIONS:
                echo(
                    f"  {d['time'][11:19]} {d['decision']:<9} {d.get('version') or '':<4} {d.get('message', '')}"
                )
        seen = len(decisions)
        if not onset_marked and replayer.onset_at and config.scenario != "stationary":
            recorder.mark("onset", f"{config.scenario} drift starts", at=replayer.onset_at)
            recorder.marks[-1]["time"] = replayer.onset_at
            echo(f"  scenario {config.scenario} injected: {replayer.stream.description}")
            onset_marked = True
        elapsed = time.monotonic() - started
        if replayer.exhausted or elapsed > max_seconds:
            echo(
                "  traffic ended"
                if replayer.exhausted
                else f"  time limit ({max_seconds:.0f}s) reached"
            )
            return
        if config.scenario == "stationary":
            if replayer.onset_at and time.time() > replayer.onset_at + config.settle_seconds:
                return
            continue
        promoted = [
            d for d in decisions if d["decision"] == "promote" and d.get("version") != first
        ]
        status_now = recorder.status()
        if promoted and offered is None and status_now.get("phase") == "Stable":
            if not config.bad_candidate:
                return
            offered = _offer_bad_candidate(config, runtime, recorder, echo)
        bad = recorder.bad_candidate
        if bad and any(
            d["decision"] in ("rollback", "promote") and d.get("version") == bad["version"]
            for d in decisions
        ):
            time.sleep(2)  # a little traffic after the verdict for the plots
            return


BAD_RUN = "demo-corrupted-labels"
BAD_RUN_TIMEOUT_S = 240.0
# The worse candidate learns from the last 3 data windows of traffic: inverted, a window
# is ~97 % positives, and a 20 s one can leave its validation slice without a negative.
BAD_WINDOW_FACTOR = 3


def run_job(runtime: LocalRuntime, run: SubmitRun, *, timeout: float) -> RunObservation:
    """One run as the operator's local driver runs it (its ``LocalRunSubmitter``: a
    ``runjob`` under the runtime's supervisor, so stopping the runtime stops it), with the
    runtime's environment; how it ended."""
    from kubeloop.local.operator.actuators import LocalRunSubmitter

    submitter = LocalRunSubmitter(runtime.supervisor, runtime.home / "runs",
                                  str(runtime.registry_uri), run.pipeline, env=runtime.env())  # fmt: skip
    submitter.submit(run)

    def ended() -> RunObservation | None:
        observed = submitter.status(run.run_name)
        return None if observed.state == RunState.RUNNING else observed

    try:
        return wait_until(ended, timeout=timeout, interval=1.0, what=f"run {run.run_name}")
    except TimeoutError:
        runtime.supervisor.stop(f"run-{run.run_name}")
        return RunObservation(run.run_name, RunState.FAILED, message=f"ran past {timeout:.0f}s")


def _offer_bad_candidate(config, runtime, recorder, echo) -> threading.Thread:
    """Runs the training pipeline on the recent window with its labels inverted (as a broken
    label join upstream would give): its gate, judging on the same corrupted window, passes
    the candidate over the champion, and LatestPassed makes it the next canary."""

    def offer() -> None:
        params = {
            "model_name": MODEL,
            "labelled_traffic": str(runtime.home / "loop" / LABELLED_FILE),
            "data_window": f"{BAD_WINDOW_FACTOR * config.data_window_seconds}s", "window": "recent",
            "seed": str(config.seed + 7), "quality": "corrupt",
            "epochs": str(config.pipeline_epochs), "batch_size": str(config.pipeline_batch_size),
            "members": str(config.pipeline_members),
        }  # fmt: skip
        run = SubmitRun(BAD_RUN, RUNNER, None, "", params)
        ended = run_job(runtime, run, timeout=BAD_RUN_TIMEOUT_S)
        version = ended.registered_version
        if not version:  # shown, and the demo ends without a rollback figure
            echo(f"  could not train the corrupted candidate: {ended.message}")
            return
        recorder.bad_candidate = {"version": version, "offered_at": time.time()}
        recorder.mark("offer", f"worse candidate {version} offered (inverted labels)")
        echo(f"  offered {version}, trained on inverted labels (a deliberately worse candidate)")

    thread = threading.Thread(target=offer, name="bad-candidate", daemon=True)
    thread.start()
    return thread


__all__ = ["DemoError", "LoopConfig", "asdict", "run_demo"]
