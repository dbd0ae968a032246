"""Wall time per stage of the training pipeline on a retraining window, three ways side by side.

One run of the pipeline (kfp.local, the compiled pipeline's components) on a window of
about 800 labelled transactions (what 20 s of the demo's traffic gives), measured in
the same process and home, one after another:

1. **a process per stage**: kfp.local's ``SubprocessRunner`` as it ships;
2. **warm stages**: the same runner, each stage forked from the stage server
   (:mod:`kubeloop.local.stages`, what ``kubeloop up`` and the demo run);
3. **in one process**: the stages' own functions (``kubeloop.components.*.impl``)
   called one after another in this warm process: the floor without any orchestration.

Every variant runs once untimed first (Feast's applied template, caches), then once
timed. The machine's 1-minute load average is taken before each timed run.

Run: ``.venv/bin/python -m kubeloop.bench --only pipeline``.
"""

from __future__ import annotations

import json
import os
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

    timings: dict[str, dict[str, float]] = {}
    walls: dict[str, float] = {}
    loads: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kubeloop-bench-") as tmp:
        home = Path(tmp)
        # this home, and no stage server but the one each variant names
        saved = {name: os.environ.pop(name, None) for name in ENVIRONMENT}
        os.environ["KUBELOOP_HOME"] = tmp
        get_settings.cache_clear()
        try:
            runtime = LocalRuntime(home, warm_stages=True)
            started = time.perf_counter()
            with runtime.start_part(STAGE_SERVER) as server:
                wait_ready(runtime.stage_socket, timeout=300, detail=server.log_tail)
                server_start = time.perf_counter() - started
                for variant, socket in (("process per stage", None),
                                        ("warm stages", runtime.stage_socket)):  # fmt: skip
                    for _attempt in ("untimed", "timed"):
                        loads[variant] = os.getloadavg()[0]
                        result = run_training_pipeline(
                            source_uri=SOURCE, epochs=EPOCHS, batch_size=BATCH_SIZE,
                            members=MEMBERS, echo=lambda _: None, stage_server=socket,
                        )  # fmt: skip
                        if not result.succeeded:
                            raise RuntimeError(f"benchmark run failed: {result.error}")
                    timings[variant] = {s.name: s.seconds or 0.0 for s in result.stages}
                    walls[variant] = result.wall_seconds
            settings = get_settings()
            for _attempt in ("untimed", "timed"):
                loads["in one process"] = os.getloadavg()[0]
                started = time.perf_counter()
                inproc = in_one_process(home, settings.registry_uri, settings.model_name)
                walls["in one process"] = time.perf_counter() - started
            timings["in one process"] = inproc.seconds
            fit = {  # the train stage's fit(), and the epochs' own seconds within it
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
    variants = list(timings)
    rows = []
    for stage in STAGES:
        row = {"stage": stage}
        for variant in variants:
            row[f"{variant} s"] = timings[variant].get(stage, float("nan"))
        row["warm / in one process"] = _ratio(
            timings["warm stages"].get(stage), timings["in one process"].get(stage)
        )
        rows.append(row)
    whole = {"stage": "whole run (wall)"}
    for variant in variants:
        whole[f"{variant} s"] = walls[variant]
    whole["warm / in one process"] = _ratio(walls["warm stages"], walls["in one process"])
    rows.append(whole)
    per_task = (walls["warm stages"] - walls["in one process"]) / max(len(result.stages), 1)
    load = {"stage": "load average (1 min) before"}
    load.update({f"{variant} s": loads[variant] for variant in variants})
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
            "forked stage (warm whole run less in one process, over the run's "
            f"{len(result.stages)} tasks): {per_task:.2f} s. "
            "Each variant ran once untimed before the timed run. 'run-parameters' (a few ms "
            "of JSON) is left out of the stage rows and counted in the whole run. In one "
            f"process fit() took {fit['fit']:.1f} s, of which the {EPOCHS} epochs' own "
            f"work {fit['epochs']:.1f} s."
        ),
    }


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"
