"""KFP component shell of the train stage (the work lives in ``impl.py``).

No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kubeloop.images import image


@dsl.component(base_image=image("train"), install_kfp_package=False)
def train(
    train_set: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    num_workers: int = 1,
    use_gpu: bool = False,
    epochs: int = 8,
    batch_size: int = 512,
    learning_rate: float = 0.003,
    hidden_units: int = 32,
    members: int = 1,
    seed: int = 7,
    validation_fraction: float = 0.2,
    target_positive_rate: float = 0.0,
    distill_weight: float = 0.0,
):
    """Trains the fraud classifier with Ray Train (``TorchTrainer``).

    Args:
        train_set: features-stage output folder with ``data.parquet``.
        model: output folder, a ``kubeloop.model.ModelBundle`` (``model.pt``, ``model.json``,
            ``preprocessing.json``, ``schema.json``) plus ``history.json`` (per-epoch metrics).
        metrics: best-epoch validation metrics, chosen threshold, fit time, and ray_cluster
            (1: trained on the Ray cluster at KUBELOOP_RAY_ADDRESS; 0: in this pod, which
            the log and the model's ray_fallback metadata explain).
        num_workers: Ray Train workers (data-parallel); on a Ray cluster its autoscaler
            adds the worker pods they need.
        use_gpu: give each worker a GPU (on the cluster's GPU worker group).
        epochs: passes over the training part.
        batch_size: rows per optimiser step and worker.
        learning_rate: Adam learning rate.
        hidden_units: width of the two hidden layers.
        members: networks trained side by side as one deep ensemble (each from its own
            initial weights, each kept at its own best validation epoch); the model
            scores their mean logit. 1: a single network.
        seed: seed of weights and shuffling.
        validation_fraction: latest share of the timeline held out to pick the best epoch
            and the decision threshold.
        target_positive_rate: label shift: train with the classes re-weighted as if the
            positive rate were this (the prior the drift service estimates), and choose
            the threshold on the validation part re-weighted the same way; 0 = as is.
        distill_weight: the training part's targets are (1 - w) * label + w * the stable
            version's score (``champion_score``, from the features stage); validation keeps
            the labels; 0 = labels.
    """
    from kubeloop.components.train.impl import run_train

    from kubeloop.training import TrainParams

    params = TrainParams(
        num_workers=num_workers,
        use_gpu=use_gpu,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        hidden_units=hidden_units,
        members=members,
        seed=seed,
        validation_fraction=validation_fraction,
        target_positive_rate=target_positive_rate,
        distill_weight=distill_weight,
    )
    outcome = run_train(train_set.path, model.path, params)
    model.metadata["framework"] = "pytorch"
    model.metadata["threshold"] = outcome.bundle.config.threshold
    # Where it trained: the Ray cluster's address, or this pod and why (recorded in KFP).
    model.metadata["ray_address"] = outcome.ray.address
    model.metadata["ray_cluster"] = outcome.ray.remote
    model.metadata["ray_fallback"] = outcome.ray.fallback
    for name, value in outcome.metrics.items():
        metrics.log_metric(name, value)
