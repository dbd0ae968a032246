"""Quick training: a small classifier in plain torch, published as a registry version.

The pipeline (``kubeloop-training``) is how kubeloop trains for real. This path trains
the same network on the example generator's data in seconds, without Ray, Feast or
kfp.local, for what must not wait for a pipeline: ``kubeloop demo --quick`` (its first
version), the local runtime's ``quick_train`` runner (known-good and deliberately bad
candidates) and the benchmarks. Everything is seeded, so
the same arguments give the same weights.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import kubeloop
from kubeloop.data import fraud
from kubeloop.evaluation.metrics import roc_auc
from kubeloop.features.join import point_in_time_join
from kubeloop.model import ModelBundle, ModelConfig, Preprocessor, TabularClassifier
from kubeloop.model.publish import publish_bundle, reference_sample
from kubeloop.registry import ModelRegistry, ModelVersion

"""Rows of the evaluation window kept as the version's drift reference sample."""


def train_bundle(
    frame: pd.DataFrame,
    *,
    seed: int = 0,
    steps: int = 300,
    hidden_units: int = 16,
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
    # Fraud is rare: weigh positives up (square root of the class ratio, a mild weight).
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


def publish_quick_version(
    registry: ModelRegistry,
    model_name: str = "fraud-detector",
    seed: int = 0,
    n_accounts: int = 200,
    days: float = 7.0,
    *,
    scenario: str = "stationary",
    steps: int = 300,
) -> ModelVersion:
    """Trains on the first 70 % of a generated window, evaluates on the rest, and publishes
    the next version with metrics, lineage and a reference sample from the evaluation part."""
    data = fraud.generate(scenario, days=days, n_accounts=n_accounts, seed=seed)
    frame = point_in_time_join(data)
    # At a midnight: an evaluation window of whole days holds every hour of the day alike,
    # as the traffic does that the drift service compares its reference sample with.
    cut = frame["event_timestamp"].quantile(0.7).floor("D")
    train, evaluation = (
        frame[frame["event_timestamp"] < cut],
        frame[frame["event_timestamp"] >= cut],
    )
    if train.empty or evaluation.empty:
        raise ValueError(
            f"too little data to train and evaluate: n_accounts={n_accounts}, days={days}"
        )
    lineage = {
        "data_hash": f"generated-{scenario}-{seed}-{n_accounts}-{days}",
        "row_count": len(frame),
        "pipeline_run_id": f"quick-{seed}",
        "pipeline_name": __name__,
        "parameters": {"steps": steps, "seed": seed},
        "code_version": kubeloop.__version__,
        "source_uri": f"example://fraud/{scenario}?days={days:g}&accounts={n_accounts}&seed={seed}",
        "window": {"start": data.truth.start, "end": data.truth.end},
    }
    return train_and_publish(
        registry, model_name, train, evaluation, seed=seed, steps=steps, lineage=lineage
    )


def train_and_publish(
    registry: ModelRegistry,
    model_name: str,
    train: pd.DataFrame,
    evaluation: pd.DataFrame,
    *,
    seed: int,
    steps: int,
    lineage: dict,
) -> ModelVersion:
    """Trains on ``train``, scores ``evaluation`` (metrics and the reference sample) and
    publishes the version (quick training has no gate)."""
    bundle = train_bundle(train, seed=seed, steps=steps)
    schema = bundle.schema
    scores, classes = bundle.predict(evaluation)
    labels = evaluation[schema.label].to_numpy()
    metrics = {
        "roc_auc": roc_auc(labels, scores),
        "accuracy": float((classes == labels).mean()),
        "eval_rows": len(evaluation),
        "train_rows": len(train),
    }
    reference = reference_sample(bundle, evaluation)  # evaluation is in time order
    gate = {"passed": True, "reasons": "quick training publishes without a gate"}
    return publish_bundle(
        registry,
        model_name,
        bundle,
        reference=reference,
        metrics=metrics,
        lineage=lineage,
        gate=gate,
    )
