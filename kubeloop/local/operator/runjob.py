"""One retraining run as its own process: ``python -m kubeloop.local.operator.runjob``.

The local run submitter starts this in a subprocess (so the operator stays responsive);
it calls the runner — by default the kfp.local training pipeline — and writes
``result.json`` (state, registered version, message) atomically when it ends.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import traceback
from pathlib import Path
from typing import Any

from kubeloop.operators.reconciler.types import RunState

DEFAULT_RUNNER = "kubeloop.local.pipelines:run_training_pipeline"


def _coerce(value: Any) -> Any:
    # Spec parameters are strings on the wire ("8", "true"); runners want typed values.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def call_runner(spec: str, params: dict[str, Any]) -> dict[str, Any]:
    module, func = spec.split(":")
    fn = importlib.import_module(module).__getattribute__(func)
    accepted = inspect.signature(fn).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        params = {k: v for k, v in params.items() if k in accepted}
    out = fn(**{k: _coerce(v) for k, v in params.items()})
    if hasattr(out, "succeeded"):  # kubeloop.local.pipelines.TrainingRunResult
        state = RunState.SUCCEEDED if out.succeeded else RunState.FAILED
        message = out.error or ""
        if out.succeeded and out.gate_passed is False:  # an objective or the champion
            message = "the gate refused the candidate: " + "; ".join(out.gate_reasons)
        return {"state": state, "version": out.version, "message": message}
    if hasattr(out, "version"):  # a published kubeloop.registry.ModelVersion
        return {"state": RunState.SUCCEEDED, "version": out.version, "message": ""}
    raise TypeError(f"runner {spec} returned {type(out).__name__}, not a run result or version")


def quick_train(
    model_name: str,
    registry_uri: str,
    seed: int = 0,
    quality: str = "good",
    scenario: str = "stationary",
    **_: Any,
):
    """A small real training run (plain torch, seconds): ``quality=bad`` trains one step only,
    which gives a deliberately worse model for rollback tests and benchmarks. The data is
    the example generator's ``scenario`` (seeded); with a drift scenario the evaluation
    window, and so the reference sample, lies after the onset, as a retrained version's does."""
    from kubeloop.data.fraud import SCENARIOS
    from kubeloop.registry import ModelRegistry
    from kubeloop.training.quick import publish_quick_version

    if quality not in ("good", "bad"):
        raise ValueError(f"quality must be good or bad, got {quality!r}")
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    steps = 300 if quality == "good" else 1
    return publish_quick_version(
        ModelRegistry(registry_uri), model_name, seed=int(seed), steps=steps, scenario=scenario
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kubeloop.local.operator.runjob")
    parser.add_argument("--runner", default=DEFAULT_RUNNER, help="module:function to call")
    parser.add_argument("--params", required=True, help="JSON object of run parameters")
    parser.add_argument("--result", type=Path, required=True, help="where to write result.json")
    args = parser.parse_args(argv)
    try:
        result = call_runner(args.runner, json.loads(args.params))
    except Exception as exc:
        result = {
            "state": RunState.FAILED,
            "version": None,
            "message": f"{type(exc).__name__}: {exc}",
        }
        traceback.print_exc()
    tmp = args.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(args.result)


if __name__ == "__main__":
    main()
