"""Label-free accuracy estimate against the accuracy the labels later give, per scenario.

The drift service estimates each version's accuracy from its prediction scores alone
(``kubeloop.drift.estimate``: average confidence after an isotonic recalibration on the
version's held-out reference sample). This measures how far that estimate is from the
truth on the example generator's scenarios: a model is trained on the pre-onset part,
its reference sample is taken from held-out pre-onset rows (as the pipeline's evaluate
stage does), and the rest of the stream is cut into windows of the demo's estimate
window; each window's estimate is compared with its labelled accuracy.

Run: ``.venv/bin/python -m kubeloop.bench --only estimate`` (rewrites the ``estimate``
section of docs/benchmarks.md) or ``.venv/bin/python bench/estimate/bench_estimate.py``
to print it. CPU only, about a minute.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import pandas as pd
from kubeloop.components.evaluate.impl import reference_sample

from kubeloop.data import fraud
from kubeloop.drift.estimate import ConfidenceEstimator
from kubeloop.features.join import point_in_time_join
from kubeloop.local.runtime import DEMO_DRIFT_DETECTORS
from kubeloop.training.quick import train_bundle

SCENARIOS = ("stationary", "covariate", "label_shift", "concept")
SEEDS = (0, 1, 2)
WINDOW = int(DEMO_DRIFT_DETECTORS["accuracy_window"])


def windows(seed: int, scenario: str, *, n_accounts: int = 600, days: float = 10.0):
    """``(estimated, labelled, reference accuracy)`` per window of ``WINDOW`` rows after the reference."""
    data = fraud.generate(scenario, days=days, n_accounts=n_accounts, seed=seed, onset_fraction=0.5)
    frame = point_in_time_join(data).sort_values("event_timestamp", kind="stable")
    onset = data.truth.onset_time
    times = frame["event_timestamp"]
    split = onset if onset is not None else times.quantile(0.5)
    before = frame[times < pd.Timestamp(split)]
    train, held_out = before.iloc[: int(len(before) * 0.7)], before.iloc[int(len(before) * 0.7) :]
    bundle = train_bundle(train, seed=seed)
    reference = reference_sample(bundle, held_out)
    estimator = ConfidenceEstimator.fit(
        reference["prediction_score"].to_numpy(),
        reference[fraud.FRAUD_SCHEMA.label].to_numpy(),
        reference["prediction"].to_numpy(),
    )
    after = frame[times >= pd.Timestamp(split)]
    scores, classes = bundle.predict(after)
    labels = after[fraud.FRAUD_SCHEMA.label].to_numpy()
    out = []
    for start in range(0, len(after) - WINDOW + 1, WINDOW):
        cut = slice(start, start + WINDOW)
        out.append(
            (
                float(estimator.estimate(np.asarray(scores)[cut])),
                float((np.asarray(classes)[cut] == labels[cut]).mean()),
                estimator.reference_accuracy,
            )
        )
    return out


def measure(seeds=SEEDS, scenarios=SCENARIOS) -> list[dict]:
    rows = []
    for scenario in scenarios:
        pairs = [p for seed in seeds for p in windows(seed, scenario)]
        diffs = [est - acc for est, acc, _ in pairs]
        static = [abs(ref - acc) for _, acc, ref in pairs]
        rows.append(
            {
                "scenario": scenario,
                "windows": len(pairs),
                "labelled accuracy (mean)": round(statistics.fmean(a for _, a, _ in pairs), 4),
                "estimate (mean)": round(statistics.fmean(e for e, _, _ in pairs), 4),
                "bias": round(statistics.fmean(diffs), 4),
                "mean abs error": round(statistics.fmean(map(abs, diffs)), 4),
                "p90 abs error": round(float(np.quantile(np.abs(diffs), 0.9)), 4),
                "held-out accuracy as the estimate: mean abs error": round(
                    statistics.fmean(static), 4
                ),
            }
        )
    return rows


NOTES = f"""Windows of {WINDOW} predictions (the demo's `accuracy_window`) after the drift
onset (after the middle of the stream when stationary), seeds {", ".join(map(str, SEEDS))};
the model is the quick trainer's (class-weighted, so its raw scores overstate fraud and
the reference recalibrates them). The estimate reads the scores only. The last column is
the baseline: the version's held-out accuracy taken as its accuracy in every window. Where P(y|x) holds
(stationary, covariate drift) it should track the labels; under label shift and concept
drift P(y|x) itself changes, which no score-only estimate can see: the bias there is the
reason the operator never rolls back on the estimate alone and the delayed labels stay
the evidence."""


def run() -> dict:
    return {
        "title": "Accuracy estimated before labels, against the labels (per scenario)",
        "command": ".venv/bin/python -m kubeloop.bench --only estimate",
        "table": measure(),
        "notes": NOTES,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args()
    print(json.dumps(measure(seeds=args.seeds), indent=2))
