"""Benchmark of canary decisions: candidates of known quality against the stable version.

Runs the scenario of ``tests/support/canary.py`` (the one the canary-decision test asserts
on) once per seed: a local runtime, labelled traffic through the router, candidates 2, 3
and 5 accuracy points worse than the stable version and one equal, published one after
another; Prometheus killed during the equal candidate's first step and in its watch
window. One row per candidate: its quality gap, how long the operator took to decide,
at what traffic share, after how many predictions, and what it decided. ``make bench``
collects it (``kubeloop.bench``); alone:

    .venv/bin/python -m kubeloop.bench --only canary
    .venv/bin/python bench/canary/bench_canary.py --seeds 0 1 2 --write-docs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kubeloop.generated import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))  # for tests.support when run as a script
from tests.support.canary import (  # noqa: E402
    CandidateRun,
    ScenarioConfig,
    ScenarioResult,
    default_drift_cache,
    event_time,
    run_scenario,
)

OUTCOMES = {"rollback": "rolled back", "promote": "promoted"}


def _points(value: float | None) -> str | float:
    return "–" if value is None else round(100 * value, 2)


def row(seed: int, result: ScenarioResult, run: CandidateRun) -> dict:
    decision = run.decision or {}
    checks = decision.get("evidence", {}).get("checks", {})
    failed = [name for name, c in checks.items() if c.get("verdict") == "fail"]
    outcome = OUTCOMES.get(decision.get("decision"), "no decision")
    if decision.get("decision") == "promote":
        confirmed = result.for_version(run.version, "confirm")
        outcome += ", confirmed" if confirmed else ", not confirmed"
    return {
        "seed": seed,
        "candidate": run.candidate.label,
        "gap on held-out sample (points)": _points(run.candidate.heldout_gap),
        "gap on its labelled traffic (points)": _points(run.live_gap),
        "outcome": outcome,
        "failed checks": ", ".join(failed) or "–",
        "time to decision s": round(run.decided_at - run.canary_at, 1) if run.decided_at else "–",
        "observed s in the deciding step": decision.get("evidence", {}).get(
            "observed_seconds", "–"
        ),
        "traffic share at decision %": decision.get("evidence", {}).get("step", "–"),
        "predictions served": run.served,
        "of which labelled": run.labelled,
        "operator's time-to-detect estimate s": (
            round(run.seconds_to_detect) if run.seconds_to_detect is not None else "–"
        ),
    }


def outage_summary(result: ScenarioResult) -> list[str]:
    lines = []
    for outage in result.outages:
        down = outage.up_at - outage.down_at
        verdicts = result.verdicts_between(outage.down_at, outage.up_at)
        after = [
            e
            for e in result.for_version(outage.version)
            if event_time(e) > outage.up_at and e["decision"] in ("step", "promote", "confirm")
        ]
        first = (
            f"first verdict ({after[0]['decision']}) {event_time(after[0]) - outage.up_at:.1f} s "
            "after Prometheus was back"
            if after
            else "no verdict after it"
        )
        lines.append(
            f"{outage.phase} of {outage.version}: down {down:.1f} s, {len(verdicts)} verdicts "
            f"while down, {first}"
        )
    return lines


def run(seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    rows, outages, traffic, config = [], [], [], ScenarioConfig()
    for seed in seeds:
        config = ScenarioConfig(seed=seed)
        with tempfile.TemporaryDirectory(prefix="kubeloop-bench-canary-") as tmp:
            result = run_scenario(
                config,
                Path(tmp),
                drift_cache=default_drift_cache(),
                echo=lambda line: print(line, flush=True),
            )
        rows += [row(seed, result, r) for r in result.runs]
        outages += [f"seed {seed}: {line}" for line in outage_summary(result)]
        if result.traffic_seconds:
            traffic.append(result.traffic_sent / result.traffic_seconds)
    worse = [r for r in rows if r["candidate"] != "equal"]
    rejected = [
        r for r in worse if r["outcome"] == "rolled back" and r["traffic share at decision %"] < 50
    ]
    seeds_arg = " ".join(str(s) for s in seeds)
    return {
        "title": "Canary decisions on candidates of known quality",
        "table": rows,
        "command": f".venv/bin/python bench/canary/bench_canary.py --seeds {seeds_arg} --write-docs",
        "notes": (
            f"The stable version is v1 trained with plain torch; each candidate is v1's network "
            f"with a lower decision threshold, found by bisection on {config.heldout_rows} "
            f"held-out rows of the traffic's generator so that its accuracy is lower by the "
            f"stated gap (the equal one is v1 republished). Its scores equal v1's, so only the "
            f"labels can tell it apart. Traffic: {config.rate:g} transactions/s in requests of "
            f"{config.batch} (measured "
            f"{statistics.median(traffic) if traffic else 0:.1f} requests/s, median over runs), "
            f"labels posted to the drift service {config.label_delay_seconds:g} s after each "
            f"answer. ModelDeployment: steps {' → '.join(f'{s} %' for s in config.steps)}, "
            f"every check required, alpha {config.alpha:g}, maxAccuracyDrop "
            f"{config.max_accuracy_drop:g}, minFeedback {config.min_feedback}, minSamples "
            f"{config.min_samples}, minStepSeconds {config.min_step_seconds}, "
            f"watchWindowSeconds {config.watch_window_seconds}, onStepTimeout Hold. Time to "
            f"decision counts from the canary decision (the candidate's predictor starting "
            f"included); the equal candidate's includes a {config.outage_seconds:g} s "
            f"Prometheus outage in its first step, after which its evidence window restarts. "
            f"The live gap is measured on the labelled answers while the candidate served, "
            f"against the stable version's over the same period. The operator's estimate is "
            f"`status.analysis.secondsToDetect` (time to catch a drop of maxAccuracyDrop at "
            f"power 0.8), the last value before the decision.\n\n"
            f"Worse candidates rolled back before 50 % of the traffic: {len(rejected)} of "
            f"{len(worse)}. Prometheus outages (killed, restarted on the same data): "
            + "; ".join(outages)
            + "."
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--write-docs", action="store_true", help="merge into docs/benchmarks.md")
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(tuple(args.seeds))
    print(json.dumps(result, indent=2))
    print(f"wall {time.perf_counter() - started:.0f} s")
    if args.write_docs:
        from kubeloop.bench.runner import OUTPUT, merge, render_section

        section = render_section("canary", result)
        OUTPUT.write_text(merge(OUTPUT.read_text() if OUTPUT.exists() else "", {"canary": section}))


if __name__ == "__main__":
    main()
