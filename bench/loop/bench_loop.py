"""Benchmark of the closed loop: the demo's measured figures, one row per seed.

Runs ``kubeloop.loop.demo.run_demo`` (v1 trained with plain torch, so the rows measure
the loop rather than the training pipeline) and records detection delay, update cycle
(drift onset → retrained version at 100 % of traffic), accuracy before / during / after,
and the worse candidate's time from canary to rollback. ``make bench`` collects it
(``kubeloop.bench``); alone:

    .venv/bin/python -m kubeloop.bench --only loop
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from kubeloop.loop.config import LoopConfig
from kubeloop.loop.demo import run_demo


def _acc(summary: dict, key: str):
    value = (summary.get(key) or {}).get("accuracy")
    return round(value, 3) if value is not None else "–"


def _s(value):
    return round(value, 1) if value is not None else "–"


def row(seed: int, summary: dict, wall: float) -> dict:
    bad = summary.get("bad_candidate") or {}
    return {
        "seed": seed,
        "scenario": summary["scenario"],
        "detection delay s": _s(summary.get("detection_delay_seconds")),
        "version registered s": _s(summary.get("version_registered_seconds")),
        "update cycle s": _s(summary.get("update_cycle_seconds")),
        "accuracy before": _acc(summary, "accuracy_before_drift"),
        "during drift": _acc(summary, "accuracy_during_drift"),
        "after promotion": _acc(summary, "accuracy_after_promotion"),
        "worse candidate rolled back": "yes" if bad.get("rolled_back") else "no",
        "canary → rollback s": _s(bad.get("seconds_canary_to_rollback")),
        "predictions it served": bad.get("predictions_served", "–"),
        "wall s": round(wall),
    }


def run(seeds: tuple[int, ...] = (0,), scenario: str = "covariate") -> dict:
    rows, cycles, config = [], [], None
    for seed in seeds:
        config = LoopConfig(scenario=scenario, seed=seed, v1_trainer="quick")
        with tempfile.TemporaryDirectory(prefix="kubeloop-bench-loop-") as tmp:
            started = time.perf_counter()
            summary = run_demo(config, home=Path(tmp) / "demo", report_dir=Path(tmp) / "report",
                               echo=lambda line: print(line, flush=True))  # fmt: skip
            rows.append(row(seed, summary, time.perf_counter() - started))
            cycles.append(summary.get("update_cycle_seconds"))
    done = [c for c in cycles if c is not None]
    median = f"{statistics.median(done):.1f} s" if done else "no completed cycle"
    seeds_arg = " ".join(str(s) for s in seeds)
    return {
        "title": "Closed loop (`kubeloop demo`)",
        "table": rows,
        "command": f".venv/bin/python -m kubeloop.bench --only loop  # seeds {seeds_arg}, {scenario}",
        "notes": (
            f"{config.rate:g} transactions/s through the router, the scenario starts "
            f"{config.onset_seconds:g} s into the traffic, labels arrive {config.label_delay_seconds:g} s "
            f"after each prediction, retraining learns from {config.data_window_seconds} s of traffic "
            f"labelled after the drift was confirmed. Median update cycle: {median} (goal ≤ 120 s); "
            "the canary analysis takes most of it."
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--scenario", default="covariate")
    parser.add_argument("--write-docs", action="store_true", help="merge into docs/benchmarks.md")
    args = parser.parse_args()
    result = run(tuple(args.seeds), args.scenario)
    print(json.dumps(result, indent=2))
    if args.write_docs:
        from kubeloop.bench.runner import OUTPUT, merge, render_section

        section = render_section("loop", result)
        OUTPUT.write_text(merge(OUTPUT.read_text() if OUTPUT.exists() else "", {"loop": section}))


if __name__ == "__main__":
    main()
