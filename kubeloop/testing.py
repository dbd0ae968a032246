"""Helpers for tests across kubeloop: a small but real registry version, built fast.

``make_registry_version`` generates fraud data, joins the account profile point-in-time,
fits the preprocessor, trains the classifier for a few hundred plain-torch steps (no Ray,
so serving, monitoring and operator tests stay quick), and publishes the bundle with
metrics, lineage, a gate verdict and a ``reference.parquet`` as docs/contracts.md
describes. Everything is seeded, so the same arguments give the same weights.
"""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
import numpy as np
import pandas as pd
import torch

from kubeloop.data import fraud
from kubeloop.model import ModelBundle, ModelConfig, Preprocessor, TabularClassifier
from kubeloop.model.publish import publish_bundle
from kubeloop.registry import ModelRegistry, ModelVersion

REFERENCE_ROWS = 2000
# One full feature row of the fraud example (a suspicious-looking transaction) for requests.
SAMPLE_TRANSACTION = {
    "amount": 420.0,
    "merchant_category": "electronics",
    "hour": 2,
    "distance_from_home_km": 250.0,
    "is_foreign": 1,
    "txn_count_1h": 4,
    "account_age_days": 30.0,
    "avg_amount_30d": 40.0,
    "txn_count_24h": 2.0,
}


def joined_frame(data: fraud.FraudData) -> pd.DataFrame:
    """Transactions with the account-profile features as of each event (no future leakage)."""
    tx = data.transactions.sort_values("event_timestamp")
    view = [c.name for c in fraud.FRAUD_SCHEMA.view_features]
    accounts = data.accounts.sort_values("event_timestamp")[
        ["account_id", "event_timestamp", *view]
    ]
    return pd.merge_asof(
        tx, accounts, on="event_timestamp", by="account_id", direction="backward"
    ).reset_index(drop=True)


def train_bundle(
    frame: pd.DataFrame, *, seed: int = 0, steps: int = 300, hidden_units: int = 16
) -> ModelBundle:
    """Fits the preprocessor and trains the network with plain torch (full-batch Adam)."""
    schema = fraud.FRAUD_SCHEMA
    torch.manual_seed(seed)
    pre = Preprocessor.fit(frame, schema)
    x = torch.from_numpy(pre.transform(frame))
    y = torch.from_numpy(frame[schema.label].to_numpy(dtype=np.float32))
    config = ModelConfig(n_inputs=pre.n_outputs, hidden_units=hidden_units, dropout=0.0)
    network = TabularClassifier(config)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    pos_weight = torch.tensor(max(float((1 - y).sum() / max(y.sum(), 1.0)), 1.0) ** 0.5)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    network.train()
    for _ in range(steps):
        optimiser.zero_grad()
        loss = loss_fn(network(x), y)
        loss.backward()
        optimiser.step()
    network.eval()
    return ModelBundle(schema=schema, preprocessor=pre, config=config, network=network)


def _roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def make_registry_version(
    registry: ModelRegistry,
    model_name: str = "fraud-detector",
    seed: int = 0,
    n_accounts: int = 200,
    days: float = 7.0,
    *,
    scenario: str = "stationary",
    steps: int = 300,
) -> ModelVersion:
    """Trains a small model on generated data and publishes it as the next version."""
    data = fraud.generate(scenario, days=days, n_accounts=n_accounts, seed=seed)
    frame = joined_frame(data)
    cut = frame["event_timestamp"].quantile(0.7)
    train, evaluation = (
        frame[frame["event_timestamp"] < cut],
        frame[frame["event_timestamp"] >= cut],
    )
    if train.empty or evaluation.empty:
        raise ValueError(
            f"too little data to train and evaluate: n_accounts={n_accounts}, days={days}"
        )
    bundle = train_bundle(train, seed=seed, steps=steps)
    schema = bundle.schema
    scores, classes = bundle.predict(evaluation)
    labels = evaluation[schema.label].to_numpy()
    metrics = {
        "roc_auc": _roc_auc(labels, scores),
        "accuracy": float((classes == labels).mean()),
        "eval_rows": len(evaluation),
    }
    reference = evaluation[[*schema.feature_names, schema.label]].head(REFERENCE_ROWS).copy()
    reference["prediction_score"] = scores[: len(reference)]
    reference["prediction"] = classes[: len(reference)]
    lineage = {
        "data_hash": f"generated-{scenario}-{seed}-{n_accounts}-{days}",
        "row_count": len(frame),
        "pipeline_run_id": f"test-{seed}",
        "pipeline_name": "kubeloop.testing",
        "parameters": {"steps": steps, "seed": seed},
        "code_version": "test",
        "source_uri": f"generated://{scenario}",
        "window": {"start": data.truth.start, "end": data.truth.end},
    }
    gate = {"passed": True, "reasons": "test fixture"}
    return publish_bundle(
        registry,
        model_name,
        bundle,
        reference=reference,
        metrics=metrics,
        lineage=lineage,
        gate=gate,
    )


def covariate_pools(seed: int, days: float = 7.0, accounts: int = 200) -> tuple[list, list]:
    """Instances (features and the entity key) from before and after the covariate onset of
    the example generator's run with ``seed``."""
    data = fraud.generate("covariate", days=days, n_accounts=accounts, seed=seed)
    frame = joined_frame(data)
    after = (frame["event_timestamp"] >= data.truth.onset_time).to_numpy()
    columns = [*fraud.FRAUD_SCHEMA.feature_names, "account_id"]
    rows = json.loads(frame[columns].to_json(orient="records"))  # plain JSON types
    return [r for r, a in zip(rows, after, strict=True) if not a], [
        r for r, a in zip(rows, after, strict=True) if a
    ]


class RouterTraffic:
    """Posts ``batch`` transactions through a router at a steady ``rate`` (requests/s) from a
    thread; ``drifted`` switches from the stationary pool to the drifted one. Counts requests
    sent and failed (5xx or no answer, e.g. while the router restarts) and goes on."""

    def __init__(
        self,
        url: str,
        stationary: list[dict],
        drifted: list[dict],
        rate: float = 20.0,
        batch: int = 5,
        model: str = "fraud-detector",
    ) -> None:
        self.url, self.pools, self.interval = url, (stationary, drifted), 1.0 / rate
        self.batch, self.model = batch, model
        self.drifted = False
        self.stop = threading.Event()
        self.sent = self.failed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(0)
        next_at = time.monotonic()
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(
                        f"{self.url}/v1/models/{self.model}:predict",
                        json={"instances": rng.sample(self.pools[self.drifted], self.batch)},
                        headers={"X-Kubeloop-Key": str(rng.random())},
                    )
                    self.sent += 1
                    self.failed += r.status_code >= 500
                except httpx.HTTPError:
                    self.failed += 1
                next_at += self.interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))
