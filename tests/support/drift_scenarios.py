"""Reference samples and drifted streams for measuring the detectors (tests and benchmarks).

``write_fraud_scenarios`` trains a small model on stationary fraud data, scores a
held-out later window (the reference sample and a stationary pool) and the
post-onset rows of each drift scenario with it. ``write_river_scenario`` does the same
with river's SEA generator, whose concept (the labelling threshold) changes while
the inputs stay put. The drift environment's ``kubeloop.drift.calibration``
reads the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

REFERENCE_ROWS = 2000


def _write(folder: Path, reference: pd.DataFrame, null: pd.DataFrame, drifted: dict[str, pd.DataFrame],
           schema: dict) -> dict[str, Path]:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "reference": folder / "reference.parquet",
        "schema": folder / "schema.json",
        "null": folder / "null.parquet",
    }
    reference.to_parquet(paths["reference"], index=False)
    null.to_parquet(paths["null"], index=False)
    paths["schema"].write_text(json.dumps(schema))
    for name, frame in drifted.items():
        paths[name] = folder / f"{name}.parquet"
        frame.to_parquet(paths[name], index=False)
    return paths


def write_fraud_scenarios(
    folder: str | Path, *, seed: int = 0, n_accounts: int = 1500, days: float = 10.0
) -> dict:
    from kubeloop.data import fraud
    from kubeloop.features.join import point_in_time_join
    from kubeloop.training.quick import train_bundle

    schema = fraud.FRAUD_SCHEMA
    cols = [*schema.feature_names, schema.label, schema.entity]
    frame = point_in_time_join(
        fraud.generate("stationary", days=days, n_accounts=n_accounts, seed=seed)
    )
    cut = frame["event_timestamp"].quantile(0.5)
    bundle = train_bundle(frame[frame["event_timestamp"] < cut], seed=seed, steps=300)

    def scored(rows: pd.DataFrame) -> pd.DataFrame:
        out = rows[cols].reset_index(drop=True)
        out["prediction_score"], out["prediction"] = bundle.predict(rows)
        return out

    later = scored(frame[frame["event_timestamp"] >= cut])
    later = later.iloc[np.random.default_rng(seed).permutation(len(later))].reset_index(drop=True)
    # Whole profiles (an account's rows of one snapshot) on each side, as the platform's
    # reference sample takes them: a row-by-row split would leave the reference with more
    # profiles per row than the stream.
    groups = later.groupby([schema.entity, *(c.name for c in schema.view_features)]).ngroup()
    order = np.random.default_rng(seed).permutation(int(groups.max()) + 1)
    sizes = groups.value_counts().reindex(order).to_numpy()
    chosen = order[: int(np.searchsorted(np.cumsum(sizes), REFERENCE_ROWS)) + 1]
    in_reference = groups.isin(chosen).to_numpy()
    reference, null = later[in_reference], later[~in_reference]
    drifted = {}
    for scenario in ("covariate", "concept", "label_shift"):
        data = fraud.generate(scenario, days=days, n_accounts=n_accounts, seed=seed)
        rows = point_in_time_join(data)
        drifted[scenario] = scored(rows[rows["event_timestamp"] >= pd.Timestamp(data.truth.onset)])
    return _write(Path(folder), reference, null, drifted, json.loads(schema.to_json()))


def write_river_scenario(folder: str | Path, *, seed: int = 0, rows: int = 6000) -> dict:
    """SEA concepts (Street & Kim): label = x0 + x1 > theta; the drift moves theta from 8 to 7."""
    from river.datasets import synth

    def take(variant: int, n: int, s: int) -> pd.DataFrame:
        gen = synth.SEA(variant=variant, seed=s, noise=0.1)  # 10% label noise: errors to watch
        records = [
            {**{f"x{k}": float(v) for k, v in x.items()}, "y": int(y)} for x, y in gen.take(n)
        ]
        out = pd.DataFrame.from_records(records)
        margin = out["x0"] + out["x1"] - 8.0  # the pre-drift concept, learned exactly
        out["prediction_score"] = 1.0 / (1.0 + np.exp(-2.0 * margin))
        out["prediction"] = (out["prediction_score"] >= 0.5).astype(int)
        return out

    schema = {
        "name": "sea",
        "columns": [
            *({"name": f"x{k}", "dtype": "float", "role": "feature"} for k in range(3)),
            {"name": "y", "dtype": "int", "role": "label"},
        ],
    }
    reference = take(0, REFERENCE_ROWS, seed)
    null = take(0, rows, seed + 1)
    drifted = {"sea_concept": take(2, rows, seed + 2)}
    return _write(Path(folder), reference, null, drifted, schema)


def write_awkward_scenario(folder: str | Path, *, seed: int = 0, rows: int = 20000) -> dict:
    """A stream of the shapes that break distribution assumptions, stationary: integer counts
    with many ties, a number that is exactly 0 for most rows, a rare 0/1 flag, a near-constant
    column, a category with a very rare value, and scores saturated at exactly 0 and 1. The
    labels follow the scores, so the reference's error rate is that of held-out predictions."""
    rng = np.random.default_rng(seed)

    def take(n: int) -> pd.DataFrame:
        score = rng.uniform(0, 1, n)
        saturated = rng.random(n)
        score[saturated < 0.35] = 0.0
        score[saturated > 0.75] = 1.0
        label = (rng.random(n) < np.clip(score, 0.04, 0.96)).astype(int)
        return pd.DataFrame({
            "visits": rng.poisson(0.4, n),
            "discount": np.where(rng.random(n) < 0.6, 0.0, rng.exponential(5.0, n)),
            "flag": (rng.random(n) < 0.02).astype(int),
            "legacy": np.where(rng.random(n) < 0.997, 1.0, rng.uniform(0, 2, n)),
            "channel": rng.choice(["web", "app", "store", "phone", "fax"], n,
                                  p=[0.55, 0.3, 0.12, 0.027, 0.003]),
            "y": label,
            "prediction_score": score,
            "prediction": (score >= 0.5).astype(int),
        })  # fmt: skip

    schema = {
        "name": "awkward",
        "columns": [
            {"name": "visits", "dtype": "int", "role": "feature", "min": 0},
            {"name": "discount", "dtype": "float", "role": "feature"},
            {"name": "flag", "dtype": "int", "role": "feature", "min": 0, "max": 1},
            {"name": "legacy", "dtype": "float", "role": "feature"},
            {"name": "channel", "dtype": "category", "role": "feature",
             "categories": ["web", "app", "store", "phone", "fax"]},
            {"name": "y", "dtype": "int", "role": "label"},
        ],
    }  # fmt: skip
    return _write(Path(folder), take(REFERENCE_ROWS), take(rows), {}, schema)
