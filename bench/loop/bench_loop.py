"""Benchmark of the closed loop: the demo's measured figures, one row per seed.

Runs ``kubeloop.demo.run.run_demo`` for each scenario as ``kubeloop demo`` runs it (v1
trained by the kfp.local training pipeline, as is every retraining run on the labelled
window) and records detection delay, update cycle
(drift onset → retrained version at 100 % of traffic), accuracy before / during / after,
the accuracy of an oracle on the same post-promotion traffic (``oracle.py``) and the
worse candidate's time from canary to rollback. ``make bench`` collects it
(``kubeloop.bench``); alone:

    .venv/bin/python -m kubeloop.bench --only loop
    .venv/bin/python bench/loop/bench_loop.py --cases concept label_shift --write-docs

A case is ``scenario[:variant]``; ``label_shift:recalibrate`` is a deployment that
watches the share of positive predictions alone and answers label shift with
``monitoring.labelShift.action: Recalibrate`` (no retraining: the stable version again,
its threshold moved for the estimated prior); ``label_shift:reweighted`` answers it with
``RetrainReweighted`` (the pipeline, its classes re-weighted to that prior).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from kubeloop.data.fraud import FRAUD_SCHEMA, SCENARIOS
from kubeloop.demo.config import LoopConfig
from kubeloop.demo.retrain import LABELLED_FILE
from kubeloop.demo.run import run_demo
from kubeloop.local.runtime import DEMO_CLASS_ERT, DEMO_ERRORS_ERT, DEMO_ERT

sys.path.insert(0, str(Path(__file__).parent))
from oracle import accuracy, train_oracle  # noqa: E402

DEFAULT_VARIANT = "pipeline"  # the deployment as `kubeloop demo` applies it
# Variants of the deployment beside the default: their demo settings.
VARIANTS = {
    DEFAULT_VARIANT: {},
    "recalibrate": {"label_shift_action": "Recalibrate", "detectors": ("predicted_class",)},
    "reweighted": {"label_shift_action": "RetrainReweighted", "detectors": ("predicted_class",)},
}

# calibrated drift thresholds shared by the runs (the same seed trains the same v1)
CACHE = Path(tempfile.gettempdir()) / "kubeloop-bench-loop-drift-cache"


def _acc(summary: dict, key: str):
    value = (summary.get(key) or {}).get("accuracy")
    return round(value, 3) if value is not None else "–"


def _s(value):
    return round(value, 1) if value is not None else "–"


def _verdict(bad: dict) -> str:
    if bad.get("rolled_back"):
        return "yes"
    return "no: promoted" if bad.get("promoted") else "no verdict before the traffic ended"


def row(seed: int, summary: dict, wall: float) -> dict:
    bad = summary.get("bad_candidate") or {}
    stationary = summary["scenario"] == "stationary"
    return {
        "scenario": summary["scenario"],
        "variant": next(
            (
                name
                for name, v in VARIANTS.items()
                if v.get("label_shift_action") == summary.get("label_shift_action")
            ),
            DEFAULT_VARIANT,
        ),
        "seed": seed,
        "detection delay s": _s(summary.get("detection_delay_seconds")),
        "flagged by": ", ".join(summary.get("detected_by") or []) or "–",
        "version registered s": _s(summary.get("version_registered_seconds")),
        "update cycle s": _s(summary.get("update_cycle_seconds")),
        "accuracy before": _acc(summary, "accuracy_before_drift"),
        "during drift": _acc(summary, "accuracy_during_drift"),
        "after promotion": _acc(summary, "accuracy_after_promotion"),
        "oracle": "–",  # filled in once every run is done (oracle_column)
        "gap to oracle": "–",
        "retraining runs": summary["retraining_runs"],
        # days of account snapshots the feeder wrote to the online store while it ran
        "online store days": (summary.get("online_store") or {}).get("writes", "off"),
        "requests refused (4xx)": summary["traffic"].get("client_errors", "–"),
        "worse candidate rolled back": "–" if stationary or not bad else _verdict(bad),
        "canary → rollback s": _s(bad.get("seconds_canary_to_rollback")),
        "wall s": round(wall),
    }


# (scenario, variant) pairs the loop section records by default: every scenario
DEFAULT_CASES = tuple((scenario, DEFAULT_VARIANT) for scenario in SCENARIOS)


def served_after_promotion(summary: dict, labelled: Path) -> pd.DataFrame | None:
    """The labelled traffic the promoted version answered from 100 % on (features and
    label), the rows its "after promotion" accuracy counts; None without a promotion."""
    after = summary.get("accuracy_after_promotion") or {}
    if after.get("sent_from") is None or not labelled.exists():
        return None
    frame = pd.read_parquet(labelled)
    chosen = (frame["sent_at"] >= after["sent_from"]) & (frame["version"] == after["version"])
    rows = frame.loc[chosen, [*FRAUD_SCHEMA.feature_names, FRAUD_SCHEMA.label]]
    return rows.reset_index(drop=True) if len(rows) else None


def oracle_column(rows: list[dict], served: list[tuple[int, LoopConfig, pd.DataFrame]]) -> None:
    """Fills the oracle's accuracy and the gap to it for each row with a promotion, one
    oracle per scenario and seed, trained once every demo run is done (the runs stop their
    Ray heads; a head this starts is stopped again). An oracle that fails (stationary
    traffic has no post-drift world) leaves its row's "–" and says why."""
    if not served:
        return
    import ray

    from kubeloop.training.ray_runtime import read_head, stop_local_head

    running = read_head() is not None
    oracles: dict[tuple[str, int], object] = {}
    try:
        for index, config, traffic in served:
            key = (config.scenario, config.seed)
            try:
                if key not in oracles:  # variants of one scenario and seed share it
                    oracles[key] = train_oracle(
                        config.scenario, seed=config.seed + 1000,
                        n_accounts=config.stream_accounts, population_seed=config.v1_seed,
                    )  # fmt: skip
            except Exception as exc:  # one oracle must not lose the table
                print(f"oracle for {config.scenario} seed {config.seed} failed: {exc}", flush=True)
                continue
            score = accuracy(oracles[key], traffic)
            rows[index]["oracle"] = round(score, 3)
            after = rows[index]["after promotion"]
            if after != "–":
                rows[index]["gap to oracle"] = round(score - after, 3)
    finally:
        ray.shutdown()
        if not running:
            stop_local_head()


def run(
    seeds: tuple[int, ...] = (0,),
    cases: tuple[tuple[str, str], ...] = DEFAULT_CASES,
    section: str = "loop",
    title: str | None = None,
) -> dict:
    """The runs' table and notes; ``section`` and ``title`` name where they are written
    (another section than ``loop`` keeps the main table)."""
    rows, cycles, config, served, refusals = [], {}, None, [], []
    for scenario, variant in cases:
        for seed in seeds:
            config = LoopConfig(
                scenario=scenario, seed=seed, v1_trainer="pipeline", **VARIANTS[variant],
                duration_seconds=300.0 if scenario != "stationary" else 120.0,
                settle_seconds=60.0,
            )  # fmt: skip
            with tempfile.TemporaryDirectory(prefix="kubeloop-bench-loop-") as tmp:
                started = time.perf_counter()
                summary = run_demo(
                    config, home=Path(tmp) / "demo", report_dir=Path(tmp) / "report",
                    echo=lambda line: print(line, flush=True), drift_cache=CACHE,
                )  # fmt: skip
                rows.append(row(seed, summary, time.perf_counter() - started))
                refusals += [
                    f"{scenario} seed {seed}, {r['seconds']:.0f} s into the traffic: {r['message']}"
                    for r in summary["gate_refusals"]
                ]
                traffic = served_after_promotion(
                    summary, Path(tmp) / "demo" / "loop" / LABELLED_FILE
                )
                if traffic is not None:
                    served.append((len(rows) - 1, config, traffic))
                cycles.setdefault((scenario, variant), []).append(
                    summary.get("update_cycle_seconds")
                )
    oracle_column(rows, served)
    medians = []
    for (scenario, variant), values in cycles.items():
        if scenario == "stationary":
            continue
        done = [c for c in values if c is not None]
        medians.append(
            f"{scenario}/{variant} "
            + (f"{statistics.median(done):.1f} s" if done else "no completed cycle")
        )
    cases_arg = " ".join(f"{s}:{r}" for s, r in cases)
    seeds_arg = " ".join(str(s) for s in seeds)
    where = "" if section == "loop" else f" --section {section}"
    where += f" --title '{title}'" if title else ""
    return {
        "title": title or "Closed loop (`kubeloop demo`)",
        "table": rows,
        "command": (
            f".venv/bin/python bench/loop/bench_loop.py --seeds {seeds_arg} "
            f"--cases {cases_arg}{where} --write-docs"
        ),
        "notes": (
            f"{config.rate:g} transactions/s through the router, the scenario starts "
            f"{config.onset_seconds:g} s into the traffic, labels arrive {config.label_delay_seconds:g} s "
            f"after each prediction and feed the drift service's error-rate detector (ERT "
            f"{DEMO_ERRORS_ERT} labels); every input, score and predicted-class detector reads every "
            f"prediction (ERT {DEMO_ERT:.0e} and {DEMO_CLASS_ERT:.0e} predictions); retraining learns from {config.data_window_seconds} s of traffic "
            "labelled after the drift was confirmed "
            f"({config.concept_data_window_seconds or config.data_window_seconds} s on concept "
            f"drift alone, `spec.retraining.conceptDataWindow`), with {config.replay_fraction:.0%} of its "
            "training rows replayed from the stable version's reference sample "
            f"(`spec.retraining.replayFraction`; {config.concept_replay_fraction:.0%} on concept "
            "drift, `conceptReplayFraction`: the error rate flagged and no input detector) "
            f"and its targets distilled toward the stable version's scores at weight "
            f"{config.distill_weight:g} (`spec.retraining.distillWeight`; none on concept drift "
            "alone), "
            f"canary steps "
            f"{' → '.join(f'{p} %' for p in config.steps)} (each analysed step needs "
            f"{config.min_samples} requests and {config.min_feedback} labelled predictions per "
            f"version, at least {config.min_step_seconds} s). Update cycle = drift onset → "
            f"retrained version at 100 % of traffic; median: {'; '.join(medians)} (goals: "
            "covariate ≤ 90 s, concept ≤ 110 s). Oracle: the pipeline's trainer (Ray Train, "
            f"the same {LoopConfig.pipeline_members}-network ensemble) on about 16,000 "
            "post-drift rows of the generator (same scenario and customers, another seed), "
            "scored on the labelled traffic the promoted version served "
            "(bench/loop/oracle.py). After promotion: the promoted version's accuracy on "
            "every labelled prediction it made from 100 % to the end of the traffic (its "
            "share beside the worse candidate's canary included; several thousand per run); "
            "gap = oracle − after promotion. "
            "Variant `recalibrate`: the deployment lists the predicted-class detector alone "
            "and answers label shift with `monitoring.labelShift.action: Recalibrate`, so no "
            "run trains: the stable version is published again with its threshold moved for "
            "the estimated prior and rolled out as a canary (the cycle ends when it serves "
            "100 %). Variant `reweighted`: the same detector alone, answered with "
            "`RetrainReweighted`: the pipeline trains with the classes re-weighted to "
            "the estimated prior.\n\n"
            + NOTES
            + "\nGate refusals: "
            + ("; ".join(refusals) if refusals else "none")
            + ".\n"
        ),
    }


NOTES = """\
Callers send what real callers send: the request features and `account_id`. Each version's
predictor looks the account profile up in Feast's online store (SQLite, the embedded
default), prepared with `feast apply` and materialized up to the replay's first day while
v1 trains; the replay goes day by day (about 38 s of traffic per day of events, rows
shuffled within a day) and a snapshot feeder writes each new day's account snapshots into
the store as the replay reaches it (column "online store days"), exporting the store's age.
A request the store cannot enrich is refused (400), counted in "requests refused (4xx)".

Why these detectors: every family is on (`method: cusum`: CUSUM charts with exact
thresholds, armed in a second or two per version, see the drift service section). The
input and score detectors (mmd, cvm, fet, prediction) read every prediction at an ERT of
10^7 predictions each (about three days at 40 a second): covariate drift moves them within
seconds, before any label comes. The error-rate detector reads each delayed label at an ERT
of 100,000 labels (about 40 minutes of labels; v1's reference sample holds a few dozen
errors, so its chart is tuned to a larger rise than a well-known rate would allow): it
sees covariate drift, concept drift (with P(x) nearly unchanged) and label shift (more
frauds, some of which v1 misses) within seconds of the labels (v1's accuracy: columns
"accuracy before" and "during drift"). **Label shift** (the fraud rate 3.5×, P(x|y)
unchanged) also moves the share of positive predictions: the predicted-class detector (two charts,
ERT 10^6 predictions) flags it, the operator records the estimated prior as evidence and,
with `monitoring.labelShift.action: Retrain`, retrains on the fresh window. The traffic
serves v1's customers (the account population of its data): with a few hundred accounts
another population's per-account features are input drift the input detectors flag within
seconds. The generator simulates each account's month of spending before its window, so
the 30-day profiles are as steady on the first day as later; a replay whose onset lies
weeks after v1's data therefore starts where v1's reference is.
Every retraining run is the training pipeline: ingest → validate → features → Ray Train →
evaluate → gate → register on the window (a Parquet file of the labelled traffic), each
stage forked from the runtime's stage server (`kubeloop.local.stages`): a deep ensemble of
five networks (`members`; their mean logit scores), 20 epochs of batches of 64, each network
kept at its own best epoch by validation loss. A run waits 20 s for the fresh
window and then runs (the pipeline section measures every stage; one CPU worker trains in
Ray Train's local mode, in the train stage's own process). The gate scores candidate and champion on the
same window (accuracy at each one's threshold re-chosen there) and refuses a challenger
worse by more than 0.01 only when the champion is better with confidence (exact McNemar
test on the rows where the two disagree, alpha 0.05); a run it stops registers nothing,
and the next comes after the cooldown (`cooldownSeconds`, 120 s here): the gate refusals
of these runs are listed below. The worse candidate (inverted labels) is the same pipeline on a corrupted window
(the last three data windows), which its gate passes (the champion looks bad on inverted
labels too) and only the canary's live accuracy catches. The canary's 50 % step keeps
the labels that decided its 25 % step (live accuracy counts from the canary's first
step), so it waits only for its own requests and its minimum time.
A promoted version is watched like v1: its reference sample is its own evaluation slice
(a few hundred rows), so its predicted-class share is known only roughly and some runs
retrain it once more (column "retraining runs").

Under drift the canary's score distribution is not held against the stable version's:
on covariate drift v1, far from its training data, spreads its scores out, while a version
retrained for the new inputs is confident, so the two score histograms lie far apart
although the retrained version is the more accurate (columns "during drift" and "after
promotion"). While drift is flagged on the stable version and labels flow, the score
check holds until live accuracy decides (operators/README.md, canary analysis).
"""


def _case(text: str) -> tuple[str, str]:
    scenario, _, variant = text.partition(":")
    if scenario not in SCENARIOS or (variant or DEFAULT_VARIANT) not in VARIANTS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: want SCENARIO[:VARIANT], scenario one of {', '.join(SCENARIOS)}, "
            f"variant one of {', '.join(VARIANTS)}"
        )
    return scenario, variant or DEFAULT_VARIANT


def _section(text: str) -> str:
    if not re.fullmatch(r"loop(-[a-z0-9]+)*", text):
        raise argparse.ArgumentTypeError(f"{text!r}: want loop or loop-<name> (a-z, 0-9)")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--cases", type=_case, nargs="+", default=list(DEFAULT_CASES),
        help="scenario[:variant] runs, e.g. concept label_shift:recalibrate",
    )  # fmt: skip
    parser.add_argument(
        "--scenarios", nargs="+", choices=SCENARIOS, help="shorthand: these scenarios, --variant"
    )
    parser.add_argument("--variant", choices=VARIANTS, default=DEFAULT_VARIANT)
    parser.add_argument("--write-docs", action="store_true", help="merge into docs/benchmarks.md")
    parser.add_argument(
        "--section", default="loop", type=_section,
        help="the docs section written (another name keeps the main table, e.g. loop-pipeline)",
    )  # fmt: skip
    parser.add_argument("--title", help="the section's title (default: the closed loop's)")
    args = parser.parse_args()
    cases = [(s, args.variant) for s in args.scenarios] if args.scenarios else args.cases
    result = run(tuple(args.seeds), tuple(cases), args.section, args.title)
    print(json.dumps(result, indent=2))
    if args.write_docs:
        from kubeloop.bench.runner import OUTPUT, merge, render_section

        section = render_section(args.section, result)
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        OUTPUT.write_text(merge(current, {args.section: section}))


if __name__ == "__main__":
    main()
