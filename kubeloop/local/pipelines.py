"""Runs the training pipeline on this machine with ``kfp.local`` and summarises the run.

``run_training_pipeline(**params)`` is the one local entry point (the CLI, the demo and
the benchmarks use it). Each stage runs as a subprocess of this environment
(``SubprocessRunner(use_venv=False)``), or is forked from the warm stage server when
one answers at ``stage_server`` / ``KUBELOOP_STAGE_SERVER`` (:mod:`kubeloop.local.stages`:
the imports paid once instead of per stage); the pipeline root is ``$KUBELOOP_HOME/runs``.
kfp.local's output is teed: the full log goes to ``runs/<run>.log`` and, unless
``verbose``, only stage starts/ends and per-epoch lines reach the console. When a stage
fails, the exception its process ended with (read from its streamed output) becomes the
run's ``error``, e.g. ingest's "missing columns ['amount']", validate's failed checks and
report path.

With ``containers=True`` every stage runs instead in its own container, from the stage
image the cluster uses (``kfp.local.DockerRunner`` on a Docker-compatible API:
:mod:`kubeloop.local.containers`); the images must have been built (``make images``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from kubeloop.pipelines.training import DEFAULT_SOURCE, PIPELINE_NAME

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_KEEP = re.compile(r"\[(train|kubeloop)\]")
_TRACEBACK = "Traceback (most recent call last):"
_QUALIFIED = re.compile(r"^(?:\w+\.)+(?=\w+(?::|$))")  # "kubeloop.data.sources." of an exception
# kfp.local's run folder: <pipeline>-<local start time in this format> (fixed width, so
# names sort by start time)
RUN_STAMP = "%Y-%m-%d-%H-%M-%S-%f"
STAGE_LINES_KEPT = 2000  # of the running stage's output, enough for any traceback


@dataclass
class StageTiming:
    name: str
    started: float
    seconds: float | None = None
    status: str = "RUNNING"


@dataclass
class TrainingRunResult:
    run_name: str
    run_dir: Path | None
    succeeded: bool
    model_name: str
    registry_uri: str
    gate_passed: bool | None = None
    gate_reasons: list[str] = field(default_factory=list)
    version: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, Path] = field(default_factory=dict)
    stages: list[StageTiming] = field(default_factory=list)
    error: str | None = None
    log_file: Path | None = None
    run_id: str | None = None  # the KFP run id recorded in the registered version's lineage
    wall_seconds: float = 0.0
    stage_runner: str = "subprocess"  # or "warm" (forked from the stage server), "containers"

    @property
    def failed_stage(self) -> str | None:
        return next((s.name for s in self.stages if s.status not in ("SUCCESS",)), None)


def stage_error(lines: Sequence[str]) -> str | None:
    """The exception a stage's process ended with, read from its output: the message
    after the last traceback (``SourceError: source ...: missing columns ['amount']``),
    the exception's module path dropped. None when the output holds no traceback.
    """
    lines = list(lines)
    starts = [i for i, line in enumerate(lines) if line.strip() == _TRACEBACK]
    if not starts:
        return None
    indent = len(lines[starts[-1]]) - len(lines[starts[-1]].lstrip())
    message: list[str] = []
    for line in lines[starts[-1] + 1 :]:
        if not message:  # frames and their source lines are indented below the header
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                message.append(line.strip())
        elif line.strip():
            message.append(line[indent:].rstrip() if line[:indent].isspace() else line.rstrip())
        else:
            break
    if not message:
        return None
    message[0] = _QUALIFIED.sub("", message[0])
    return "\n".join(message)


class _StageTee(io.TextIOBase):
    """Receives kfp.local's stdout: records stage timings, logs everything, echoes some,
    and keeps each failed stage's own error message (``stage_errors``)."""

    def __init__(self, log: TextIO, console: TextIO, verbose: bool, on_line: Callable[[str], None]):
        self.log, self.console, self.verbose, self.on_line = log, console, verbose, on_line
        self.stages: dict[str, StageTiming] = {}
        self.stage_errors: dict[str, str] = {}
        self._stage_lines: deque[str] = deque(maxlen=STAGE_LINES_KEPT)
        self._buffer = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._line(line)
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def _echo(self, text: str) -> None:
        # The callback may print: point stdout at the console meanwhile, not back at us.
        saved, sys.stdout = sys.stdout, self.console
        try:
            self.on_line(text)
        finally:
            sys.stdout = saved

    def _line(self, line: str) -> None:
        plain = _ANSI.sub("", line)
        now = time.perf_counter()
        if m := _START.search(plain):
            self.stages[m.group(1)] = StageTiming(m.group(1), now)
            self._stage_lines.clear()
            self._echo(f"▶ {m.group(1)}")
        elif m := _END.search(plain):
            stage = self.stages.setdefault(m.group(1), StageTiming(m.group(1), now))
            stage.seconds, stage.status = now - stage.started, m.group(2)
            if stage.status != "SUCCESS" and (error := stage_error(self._stage_lines)):
                self.stage_errors[stage.name] = error
            self._echo(
                f"{'✔' if stage.status == 'SUCCESS' else '✘'} {stage.name} "
                f"{stage.status.lower()} in {stage.seconds:.1f}s"
            )
        else:
            self._stage_lines.append(plain)
            if self.verbose:
                self.console.write(line + "\n")
            elif m := _KEEP.search(plain):
                self._echo("    " + plain[m.start() :].strip())


@contextlib.contextmanager
def _named_output_conditions() -> Iterator[None]:
    """Lets kfp.local (2.17) evaluate ``dsl.If`` on a named output such as ``gate.passed``.

    Its condition evaluator finds task outputs only in channels named ``<task>-Output``
    or ``<task>--<output>``; a NamedTuple field's channel is ``<task>-<output>``
    (``gate-passed``), which it then treats as a missing parent input, so the branch is
    silently skipped. Here, when that lookup fails, the channel is split into task and
    output at each ``-`` and looked up as a task output. Clusters evaluate the same IR
    correctly; nothing changes there.
    """
    from kfp.local.orchestrator import enhanced_dag_orchestrator as orchestrator

    evaluator = orchestrator.ConditionEvaluator
    original = evaluator.__dict__["_resolve_pipeline_channel"]

    def resolve(channel_ref: str, io_store: Any) -> Any:
        ref = channel_ref.replace("pipelinechannel--", "")
        parts = ref.split("-")
        for i in range(len(parts) - 1, 0, -1):
            task, output = "-".join(parts[:i]), "-".join(parts[i:])
            try:
                return io_store.get_task_output(task, output)
            except (KeyError, ValueError):
                continue
        return original.__func__(channel_ref, io_store)

    evaluator._resolve_pipeline_channel = staticmethod(resolve)
    try:
        yield
    finally:
        evaluator._resolve_pipeline_channel = original


def _artifact(run_dir: Path, task: str, output: str) -> Path | None:
    """The path of ``output`` of ``task`` in a kfp.local run folder (None when absent)."""
    matches = sorted(run_dir.glob(f"**/{task}/{output}"))
    return matches[0] if matches else None


def _summarise(result: TrainingRunResult) -> None:
    run_dir = result.run_dir
    if run_dir is None:
        return
    gate_file = _artifact(run_dir, "gate", "decision")
    if gate_file and (gate_file / "gate.json").exists():
        gate = json.loads((gate_file / "gate.json").read_text())
        result.gate_passed, result.gate_reasons = bool(gate["passed"]), list(gate["reasons"])
        result.reports["gate"] = _artifact(run_dir, "gate", "report") or gate_file
    evaluation = _artifact(run_dir, "evaluate", "evaluation")
    if evaluation and (evaluation / "evaluation.json").exists():
        ev = json.loads((evaluation / "evaluation.json").read_text())
        keys = ("roc_auc", "pr_auc", "ece", "accuracy", "precision", "recall", "f1", "threshold")
        result.metrics = {k: ev[k] for k in keys if k in ev}
        result.metrics["eval_rows"] = ev.get("rows")
        result.reports["evaluation"] = _artifact(run_dir, "evaluate", "report") or evaluation
    validation = _artifact(run_dir, "validate", "report")
    if validation:
        result.reports["validation"] = validation
    register = _artifact(run_dir, "register", "executor_output.json")
    if register:  # the register task ran: its return value is the new version
        result.version = json.loads(register.read_text())["parameterValues"]["Output"]
    model = _artifact(run_dir, "train", "model")
    if model:
        result.reports["model"] = model


def _local_path(uri: str) -> bool:
    """A path on this machine rather than a URI (``s3://``, ``example://``)."""
    return bool(uri) and "://" not in uri


@contextlib.contextmanager
def _stage_runner(
    containers: bool, settings: Any, params: dict[str, Any], warm: Path | None = None
) -> Iterator[Any]:
    """kfp.local's runner: a subprocess of this environment (forked from the stage
    server at ``warm`` when given), or each stage's image."""
    from kfp import local

    if not containers:
        from kubeloop.local.stages import warm_stages

        with warm_stages(warm) if warm else contextlib.nullcontext():
            yield local.SubprocessRunner(use_venv=False)
        return
    from kubeloop.images import STAGES, image
    from kubeloop.local.containers import (
        ContainerEngineError,
        container_api,
        missing_images,
        stage_container_args,
    )

    # Local paths a stage reads or writes besides the run folder (kfp.local binds that).
    binds = [
        Path(params[key])
        for key in ("registry_uri", "source_uri", "schema_uri")
        if _local_path(params[key])
    ]
    if _local_path(params["registry_uri"]):
        Path(params["registry_uri"]).mkdir(parents=True, exist_ok=True)
    with container_api(settings.home) as api:
        missing = missing_images(api, [image(stage) for stage in STAGES])
        if missing:
            raise ContainerEngineError(
                f"the {api.engine} engine at {api.url} lacks the stage images "
                f"{', '.join(missing)}: build them with `make images`"
            )
        saved = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = api.url  # kfp.local calls docker.from_env()
        try:
            yield local.DockerRunner(**stage_container_args(api, settings, binds))
        finally:
            if saved is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = saved


def run_training_pipeline(
    *,
    source_uri: str = DEFAULT_SOURCE,
    schema_uri: str = "",
    window_start: str = "",
    window_end: str = "",
    model_name: str | None = None,
    registry_uri: str | None = None,
    eval_fraction: float = 0.2,
    num_workers: int | None = None,
    use_gpu: bool | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    hidden_units: int | None = None,
    members: int | None = None,
    seed: int | None = None,
    target_positive_rate: float = 0.0,
    replay_version: str = "",
    replay_fraction: float = 0.0,
    distill_weight: float = 0.0,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
    containers: bool = False,
    stage_server: str | Path | None = None,
) -> TrainingRunResult:
    """Runs the pipeline locally; unset training parameters come from settings.

    ``containers`` runs each stage in its stage image instead of a subprocess; raises
    :class:`~kubeloop.local.containers.ContainerEngineError` when no engine can be
    reached or a stage image is missing. Otherwise the stages are forked from the warm
    stage server at ``stage_server`` (default ``settings.stage_server``) when one
    answers there, and started as processes when none does (the run says which).
    """
    from kfp import local

    from kubeloop.local.stages import ping
    from kubeloop.pipelines.training import training_pipeline
    from kubeloop.registry import ModelRegistry
    from kubeloop.settings import get_settings

    settings = get_settings()
    t = settings.training
    model_name = model_name or settings.model_name
    registry_uri = registry_uri or settings.registry_uri
    if _local_path(registry_uri):  # stage subprocesses must not depend on the working directory
        registry_uri = str(Path(registry_uri).resolve())
    params = {
        "source_uri": source_uri,
        "schema_uri": schema_uri,
        "window_start": window_start,
        "window_end": window_end,
        "model_name": model_name,
        "registry_uri": registry_uri,
        "eval_fraction": eval_fraction,
        "num_workers": num_workers or t.num_workers,
        "use_gpu": t.use_gpu if use_gpu is None else use_gpu,
        "epochs": epochs or t.epochs,
        "batch_size": batch_size or t.batch_size,
        "learning_rate": learning_rate or t.learning_rate,
        "hidden_units": hidden_units or t.hidden_units,
        "members": members or t.members,
        "seed": t.seed if seed is None else seed,
        "target_positive_rate": float(target_positive_rate),
        "replay_version": replay_version,
        "replay_fraction": float(replay_fraction),
        "distill_weight": float(distill_weight),
    }
    if containers:  # stage containers do not share this working directory
        for key in ("source_uri", "schema_uri"):
            if _local_path(params[key]):
                params[key] = str(Path(params[key]).resolve())
    runs = Path(settings.home).resolve() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    log_path = runs / f".run-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}.log"
    started = time.perf_counter()
    # Stages fork from the stage server when one is configured and answers.
    configured = None if containers else (stage_server or settings.stage_server)
    warm = Path(configured) if configured and ping(configured) is not None else None
    if warm is not None:
        echo(f"stages forked from the warm stage server at {warm}")
    elif configured:
        echo(f"no stage server answers at {configured}: a process per stage")
    error = None
    with (
        _stage_runner(containers, settings, params, warm) as runner,
        open(log_path, "w") as log,
    ):
        local.init(runner=runner, pipeline_root=str(runs))
        tee = _StageTee(log, sys.stdout, verbose, echo)
        real_stdout, sys.stdout = sys.stdout, tee
        called_at = datetime.now()
        try:
            with warnings.catch_warnings(), _named_output_conditions():
                # Stage images are kubeloop's own; locally the same code runs in this venv.
                warnings.filterwarnings("ignore", message=".*non-Python base image")
                training_pipeline(**params)
        except Exception as exc:  # a failed stage: summarise what ran, then report it
            error = f"{type(exc).__name__}: {_ANSI.sub('', str(exc))}"
        finally:
            sys.stdout = real_stdout
    run_dir = own_run_dir(runs, called_at)
    run_name = run_dir.name if run_dir else log_path.stem
    final_log = runs / f"{run_name}.log"
    log_path.replace(final_log)
    result = TrainingRunResult(
        run_name=run_name,
        run_dir=run_dir,
        succeeded=error is None,
        model_name=model_name,
        registry_uri=registry_uri,
        stages=list(tee.stages.values()),
        error=error,
        log_file=final_log,
        wall_seconds=time.perf_counter() - started,
        stage_runner="containers" if containers else ("warm" if warm else "subprocess"),
    )
    if error is not None and result.failed_stage in tee.stage_errors:
        # The stage's own message ("missing columns [...]"), not kfp's "Inner task failed".
        result.error = tee.stage_errors[result.failed_stage]
    _summarise(result)
    if result.version:
        version = ModelRegistry(registry_uri).get(model_name, result.version)
        result.run_id = version.lineage.get("pipeline_run_id")
    return result


def own_run_dir(runs: Path, called_at: datetime) -> Path | None:
    """The folder in ``runs`` of the run started at ``called_at``: the first to start at or
    after it. Runs started before the call sort before it; another run in the same folder
    (a retraining run beside the demo's worse candidate) started later sorts after it."""
    first = f"{PIPELINE_NAME}-{called_at.strftime(RUN_STAMP)}"
    new = sorted(
        p for p in runs.iterdir()
        if p.is_dir() and p.name.startswith(PIPELINE_NAME) and p.name >= first
    )  # fmt: skip
    return new[0] if new else None


_RUNNERS = {
    "warm": "stages forked from the stage server",
    "subprocess": "a process per stage",
    "containers": "a container per stage",
}


def format_summary(result: TrainingRunResult) -> str:
    """A readable end-of-run summary for the console."""
    lines = [
        f"Run {result.run_name}: {'succeeded' if result.succeeded else 'FAILED'} "
        f"in {result.wall_seconds:.0f}s ({_RUNNERS[result.stage_runner]})"
    ]
    if result.error:
        error = result.error.replace("\n", "\n    ")
        lines.append(f"  failed stage: {result.failed_stage or '?'} — {error}")
    if result.gate_passed is not None:
        lines.append(f"  gate: {'passed' if result.gate_passed else 'failed'}")
        lines += [f"    - {reason}" for reason in result.gate_reasons]
    if result.version:
        lines.append(f"  registered: {result.model_name} {result.version} in {result.registry_uri}")
    elif result.gate_passed is False:
        lines.append("  registered: nothing (the gate failed)")
    if result.metrics:
        m = result.metrics
        lines.append(
            "  metrics: "
            + ", ".join(
                f"{k}={m[k]:.4f}"
                for k in ("roc_auc", "pr_auc", "ece", "f1", "accuracy")
                if isinstance(m.get(k), float)
            )
            + f" on {m.get('eval_rows')} evaluation rows"
        )
    for name, path in result.reports.items():
        lines.append(f"  {name}: {path}")
    if result.log_file:
        lines.append(f"  log: {result.log_file}")
    return "\n".join(lines)
