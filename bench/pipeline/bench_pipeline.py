"""Wall time per stage of the training pipeline on a retraining window, three ways side by side.

One run of the pipeline (kfp.local, the compiled pipeline's components) on a window of
about 800 labelled transactions (what 20 s of the demo's traffic gives), measured in
the same process and home, one after another:

1. **a process per stage**: kfp.local's ``SubprocessRunner`` as it ships;
2. **warm stages**: the same runner, each stage forked from the stage server
   (:mod:`kubeloop.local.stages`, what ``kubeloop up`` and the demo run);
3. **in one process**: the stages' own functions (``kubeloop.components.*.impl``)
   called one after another in this warm process: the floor without any orchestration.

Every variant runs once untimed first (Feast's applied template, caches). A process per
stage is then timed once; warm stages and in one process are timed in ``ROUNDS``
alternating rounds (one of each per round, so both see the same load on this shared
machine), and the table gives each one's median per stage and for the whole run, the
ratio of the medians and the range of the rounds' own ratios. The machine's 1-minute
load average is taken before each timed run.

Run: ``.venv/bin/python -m kubeloop.bench --only pipeline``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeloop.demo.config import LoopConfig
from kubeloop.training import TrainParams

SOURCE = "example://fraud/stationary?days=1&accounts=400&seed=0"
# what the demo's retraining runs use
EPOCHS = LoopConfig.pipeline_epochs
BATCH_SIZE = LoopConfig.pipeline_batch_size
MEMBERS = LoopConfig.pipeline_members
ENVIRONMENT = ("KUBELOOP_HOME", "KUBELOOP_STAGE_SERVER")
STAGES = ("ingest", "validate", "features", "train", "evaluate", "gate", "register")
ROUNDS = 5  # timed rounds of warm stages and in one process


@dataclass
class InProcessRun:
    seconds: dict[str, float]  # per stage
    trained: Any  # the train stage's TrainOutcome
    registered: bool  # the gate passed and the register stage ran


def in_one_process(
    home: Path,
    registry: str,
    model: str,
    source: str = SOURCE,
    params: TrainParams | None = None,
    *,
    replay: Any = None,
) -> InProcessRun:
    """The stage functions one after another, as the pipeline wires them, on ``source``
    (``replay``: the features stage's ``ReplaySpec``); seconds per stage."""
    from kubeloop.components.evaluate.impl import run_evaluate
    from kubeloop.components.features.impl import run_features
    from kubeloop.components.gate.impl import run_gate
    from kubeloop.components.ingest.impl import run_ingest
    from kubeloop.components.register.impl import run_register
    from kubeloop.components.train.impl import run_train
    from kubeloop.components.validate.impl import run_validate

    params = params or TrainParams(epochs=EPOCHS, batch_size=BATCH_SIZE, members=MEMBERS)
    work = Path(tempfile.mkdtemp(prefix="inprocess-", dir=home))
    d = {name: work / name for name in ("dataset", "validated", "train", "eval", "model")}
    seconds: dict[str, float] = {}

    def timed(stage: str, call):
        started = time.perf_counter()
        out = call()
        seconds[stage] = time.perf_counter() - started
        return out

    ingest = timed("ingest", lambda: run_ingest(source, "", "", "", d["dataset"]))
    timed(
        "validate", lambda: run_validate(d["dataset"], d["validated"], work / "v.html", work / "ss")
    )
    timed(
        "features",
        lambda: run_features(d["validated"], d["train"], d["eval"], 0.2, replay=replay),
    )
    trained = timed("train", lambda: run_train(d["train"], d["model"], params))
    timed("evaluate", lambda: run_evaluate(d["model"], d["eval"], work / "e.html", work / "ev"))
    verdict = timed(
        "gate",
        lambda: run_gate(
            work / "ev", d["eval"], model, registry, work / "gate", work / "g.md", d["model"]
        ),
    )
    if verdict.passed:
        metadata = {"data_hash": ingest.data_hash, "row_count": ingest.row_count,
                    "source_uri": source, "window": "[-inf, +inf)"}  # fmt: skip
        parameters = json.dumps({"source_uri": source, "epochs": params.epochs})
        timed(
            "register",
            lambda: run_register(d["model"], work / "ev", work / "gate", metadata, model,
                                 registry, "in-process", parameters),
        )  # fmt: skip
    return InProcessRun(seconds, trained, verdict.passed)


def run() -> dict:
    from kubeloop.local.pipelines import run_training_pipeline
    from kubeloop.local.runtime import STAGES as STAGE_SERVER
    from kubeloop.local.runtime import LocalRuntime
    from kubeloop.local.stages import wait_ready
    from kubeloop.settings import get_settings

    timings: dict[str, list[dict[str, float]]] = {}  # variant -> per timed run, per stage
    walls: dict[str, list[float]] = {}
    loads: dict[str, list[float]] = {}

    def record(variant: str, load: float, wall: float, stages: dict[str, float]) -> None:
        loads.setdefault(variant, []).append(load)
        walls.setdefault(variant, []).append(wall)
        timings.setdefault(variant, []).append(stages)

    with tempfile.TemporaryDirectory(prefix="kubeloop-bench-") as tmp:
        home = Path(tmp)
        # this home, and no stage server but the one each variant names
        saved = {name: os.environ.pop(name, None) for name in ENVIRONMENT}
        os.environ["KUBELOOP_HOME"] = tmp
        get_settings.cache_clear()
        try:
            runtime = LocalRuntime(home, warm_stages=True)
            settings = get_settings()

            def pipeline(socket: str | None):
                result = run_training_pipeline(
                    source_uri=SOURCE, epochs=EPOCHS, batch_size=BATCH_SIZE,
                    members=MEMBERS, echo=lambda _: None, stage_server=socket,
                )  # fmt: skip
                if not result.succeeded:
                    raise RuntimeError(f"benchmark run failed: {result.error}")
                return result

            def inprocess():
                started = time.perf_counter()
                out = in_one_process(home, settings.registry_uri, settings.model_name)
                return out, time.perf_counter() - started

            started = time.perf_counter()
            with runtime.start_part(STAGE_SERVER) as server:
                wait_ready(runtime.stage_socket, timeout=300, detail=server.log_tail)
                server_start = time.perf_counter() - started
                socket = runtime.stage_socket
                for untimed in (lambda: pipeline(None), lambda: pipeline(socket), inprocess):
                    untimed()
                load = os.getloadavg()[0]
                result = pipeline(None)
                record("process per stage", load, result.wall_seconds,
                       {s.name: s.seconds or 0.0 for s in result.stages})  # fmt: skip
                for round_ in range(ROUNDS):
                    print(f"pipeline bench: timed round {round_ + 1}/{ROUNDS}", flush=True)
                    load = os.getloadavg()[0]
                    result = pipeline(socket)
                    record("warm stages", load, result.wall_seconds,
                           {s.name: s.seconds or 0.0 for s in result.stages})  # fmt: skip
                    load = os.getloadavg()[0]
                    inproc, wall = inprocess()
                    record("in one process", load, wall, inproc.seconds)
            fit = {  # the last in-process train stage's fit(), and its epochs' own seconds
                "fit": inproc.trained.metrics["fit_seconds"],
                "epochs": sum(row.get("epoch_seconds", 0.0) for row in inproc.trained.history),
            }
            rows_in_window = result.metrics.get("eval_rows")
        finally:
            for name, value in saved.items():
                os.environ.pop(name, None)
                if value is not None:
                    os.environ[name] = value
            get_settings.cache_clear()
    return _table(timings, walls, loads, server_start, len(result.stages), fit, rows_in_window)


def _median(runs: list[dict[str, float]], stage: str) -> float:
    values = [run[stage] for run in runs if stage in run]
    return statistics.median(values) if values else float("nan")


def _table(timings, walls, loads, server_start, tasks, fit, rows_in_window) -> dict:
    variants = list(timings)
    rows = []
    for stage in STAGES:
        row = {"stage": stage}
        for variant in variants:
            row[f"{variant} s"] = _median(timings[variant], stage)
        row["warm / in one process"] = _ratio(row["warm stages s"], row["in one process s"])
        rows.append(row)
    whole = {"stage": "whole run (wall)"}
    for variant in variants:
        whole[f"{variant} s"] = statistics.median(walls[variant])
    whole["warm / in one process"] = _ratio(whole["warm stages s"], whole["in one process s"])
    rows.append(whole)
    per_round = [w / i for w, i in zip(walls["warm stages"], walls["in one process"], strict=True)]
    per_task = (whole["warm stages s"] - whole["in one process s"]) / max(tasks, 1)
    load = {"stage": "load average (1 min) before, median"}
    load.update({f"{variant} s": statistics.median(loads[variant]) for variant in variants})
    rows.append(load)
    return {
        "title": "Training pipeline on a retraining window: wall time per stage (kfp.local)",
        "command": ".venv/bin/python -m kubeloop.bench --only pipeline",
        "table": rows,
        "notes": (
            f"`{SOURCE}` ({rows_in_window} evaluation rows), {EPOCHS} epochs, batch "
            f"{BATCH_SIZE}, {MEMBERS} ensemble members, one CPU worker: Ray Train's local mode, the training loop in the "
            "train stage's own process with no Ray joined (a controller and a worker "
            "process per fit() cost 7-8 s here; see the Ray Train overhead section). The "
            f"stage server's start, once per runtime: {server_start:.1f} s (its imports and "
            "the set-up the stages' first calls would pay, done once). The fixed cost per "
            "forked stage (warm whole run less in one process, medians, over the run's "
            f"{tasks} tasks): {per_task:.2f} s. "
            "Each variant ran once untimed first; a process per stage was then timed once, "
            f"warm stages and in one process in {len(per_round)} alternating rounds: the "
            "figures are medians; the rounds' own ratios of warm to in one process ranged "
            f"{min(per_round):.2f}-{max(per_round):.2f} (whole runs: warm "
            f"{_span(walls['warm stages'])} s, in one process "
            f"{_span(walls['in one process'])} s). 'run-parameters' (a few ms "
            "of JSON) is left out of the stage rows and counted in the whole run. In one "
            f"process fit() took {fit['fit']:.1f} s, of which the {EPOCHS} epochs' own "
            f"work {fit['epochs']:.1f} s."
        ),
    }


def _span(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"
