"""KFP component shell of the features stage (the work lives in ``impl.py``).

No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from kubeloop.images import image


@dsl.component(base_image=image("features"), install_kfp_package=False)
def features(
    dataset: Input[Dataset],
    train_set: Output[Dataset],
    eval_set: Output[Dataset],
    eval_fraction: float = 0.2,
    model_name: str = "",
    registry_uri: str = "",
    replay_version: str = "",
    replay_fraction: float = 0.0,
    distill_weight: float = 0.0,
    seed: int = 0,
):
    """Joins feature-view features point-in-time with Feast and splits by event time.

    Args:
        dataset: the validated dataset folder.
        train_set: ``data.parquet``: entity, timestamp, id, features, label (earlier events).
        eval_set: ``data.parquet`` with the same columns (the latest ``eval_fraction``).
        eval_fraction: share of the window's time span, at its end, held out for evaluation.
        model_name: registry model whose version is replayed.
        registry_uri: the registry ("" = the settings' registry).
        replay_version: the version whose reference sample is replayed.
        replay_fraction: share of the training rows replayed from it (0: none).
        distill_weight: above 0, the training rows carry the replayed version's score
            (``champion_score``), which the train stage distils toward.
        seed: seed of the replay draw.
    """
    from kubeloop.components.features.impl import ReplaySpec, run_features

    replay = ReplaySpec(
        model_name, replay_version, replay_fraction, registry_uri, seed, distill=distill_weight > 0
    )
    result = run_features(dataset.path, train_set.path, eval_set.path, eval_fraction, replay=replay)
    if result.replay:  # the training set's rows only
        train_set.metadata["replay"] = result.replay
    for out, rows in ((train_set, result.train_rows), (eval_set, result.eval_rows)):
        out.metadata["row_count"] = rows
        out.metadata["split_cutoff"] = result.cutoff
        out.metadata["rows_without_features"] = result.rows_without_features
        if result.feast_repo:
            out.metadata["feast_repo"] = result.feast_repo
        for key in ("data_hash", "source_uri", "window"):
            if key in dataset.metadata:
                out.metadata[key] = dataset.metadata[key]
