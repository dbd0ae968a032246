"""Features: join feature-view features point-in-time (Feast) and split by event time.

Sources whose features all arrive with the request (no feature view) skip Feast and
are only split.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kubeloop.data.schema import DatasetSchema
from kubeloop.data.sources import SourceData, read_snapshot

DATA_FILE = "data.parquet"


class FeatureStageError(RuntimeError):
    """The dataset cannot be turned into train/eval sets; the message says why."""


@dataclass(frozen=True)
class FeaturesResult:
    train_rows: int
    eval_rows: int
    cutoff: str
    feast_repo: str | None
    rows_without_features: int
    replay: dict | None = None  # the replayed rows' lineage (kubeloop.data.replay)


@dataclass(frozen=True)
class ReplaySpec:
    """Where the replayed rows come from: ``version``'s reference sample in ``registry_uri``
    ("" = the settings' registry), ``fraction`` of the training rows. With ``distill`` the
    training rows also carry ``version``'s score (:func:`with_champion_scores`)."""

    model_name: str
    version: str
    fraction: float
    registry_uri: str = ""
    seed: int = 0
    distill: bool = False


def with_champion_scores(
    train: pd.DataFrame, schema: DatasetSchema, spec: ReplaySpec
) -> pd.DataFrame:
    """The training part with the stable version's score of every row beside its label
    (``CHAMPION_SCORE``), the teacher of a run that distils toward it. The version's
    model files are read from the registry, checksums verified."""
    from kubeloop.model.publish import load_version
    from kubeloop.registry import ModelRegistry
    from kubeloop.training.loop import CHAMPION_SCORE

    if not spec.version:
        raise FeatureStageError(
            "distillation needs the stable version (run parameter replay_version)"
        )
    registry = ModelRegistry(spec.registry_uri or None)
    try:
        champion = load_version(registry, spec.model_name, spec.version)
    except Exception as exc:
        raise FeatureStageError(
            f"{spec.model_name}/{spec.version}'s model cannot be read to distil from: {exc}"
        ) from exc
    if champion.schema.feature_names != schema.feature_names:
        raise FeatureStageError(
            f"{spec.model_name}/{spec.version} scores features {champion.schema.feature_names}, "
            f"the training set has {schema.feature_names}: it cannot teach this run"
        )
    return train.assign(**{CHAMPION_SCORE: champion.predict_proba(train)})


def with_replay(
    train: pd.DataFrame, schema: DatasetSchema, spec: ReplaySpec
) -> tuple[pd.DataFrame, dict]:
    """The training part with the replayed rows before it. They are past data: they carry
    the training part's first event time (so any later split by time keeps them in
    training), no account (entity -1; the reference holds features, not keys) and ids
    ``replay-<version>-<n>``."""
    from kubeloop.data.replay import load_replay
    from kubeloop.registry import ModelRegistry

    replay = load_replay(
        ModelRegistry(spec.registry_uri or None), spec.model_name, spec.version, schema,
        window_rows=len(train), fraction=spec.fraction, seed=spec.seed,
    )  # fmt: skip
    rows = replay.rows.copy()
    rows[schema.entity] = pd.Series(-1, index=rows.index, dtype=train[schema.entity].dtype)
    rows[schema.timestamp] = train[schema.timestamp].min()
    if schema.id_column:
        rows[schema.id_column] = [f"replay-{spec.version}-{i}" for i in range(len(rows))]
    combined = pd.concat([rows[list(train.columns)], train], ignore_index=True)
    return combined, replay.lineage()


def output_columns(schema: DatasetSchema) -> list[str]:
    """Entity, timestamp, id, features (schema order), label: the train/eval set contract."""
    head = [schema.entity, schema.timestamp] + ([schema.id_column] if schema.id_column else [])
    return head + schema.feature_names + [schema.label]


def time_split(
    frame: pd.DataFrame, ts: str, eval_fraction: float
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """Eval = events in the latest ``eval_fraction`` of the window's time span; train = the rest."""
    if not 0.0 < eval_fraction < 1.0:
        raise FeatureStageError(
            f"eval_fraction must be strictly between 0 and 1, got {eval_fraction}"
        )
    frame = frame.sort_values(ts, kind="mergesort").reset_index(drop=True)
    t0, t1 = frame[ts].min(), frame[ts].max()
    cutoff = t0 + (t1 - t0) * (1.0 - eval_fraction)
    is_eval = frame[ts] >= cutoff
    train, evaluation = (
        frame[~is_eval].reset_index(drop=True),
        frame[is_eval].reset_index(drop=True),
    )
    if train.empty or evaluation.empty:
        raise FeatureStageError(
            f"time split at {cutoff} leaves {len(train)} train and {len(evaluation)} eval rows; "
            "the window needs events spread over time"
        )
    return train, evaluation, cutoff


def join_features(data: SourceData, workdir: Path) -> tuple[pd.DataFrame, str | None]:
    """Adds the feature-view features point-in-time, unless the source already holds them."""
    from kubeloop.features.store import ENTITY_TIMESTAMP, prepare_feature_store, training_frame

    schema, tx = data.schema, data.transactions
    view = [c.name for c in schema.view_features]
    if not view or all(c in tx.columns for c in view):
        return tx, None
    if data.account_features is None:
        raise FeatureStageError(
            f"schema {schema.name!r} takes {view} from feature view {schema.feature_view!r}, "
            "but the dataset has no account_features.parquet"
        )
    if not schema.feature_service:
        raise FeatureStageError(
            f"schema {schema.name!r} declares a feature view but no feature_service"
        )
    store = prepare_feature_store(workdir, data.account_features)
    entity_df = tx.drop(columns=[c for c in view if c in tx.columns])
    if schema.label_timestamp:
        entity_df = entity_df.drop(columns=[schema.label_timestamp])
    entity_df = entity_df.rename(columns={schema.timestamp: ENTITY_TIMESTAMP})
    joined = training_frame(store, entity_df, schema.feature_service)
    return joined.rename(columns={ENTITY_TIMESTAMP: schema.timestamp}), str(workdir)


def run_features(
    dataset_dir: str | Path,
    train_dir: str | Path,
    eval_dir: str | Path,
    eval_fraction: float = 0.2,
    *,
    feast_workdir: str | Path | None = None,
    replay: ReplaySpec | None = None,
) -> FeaturesResult:
    """Writes ``data.parquet`` train and eval sets; the Feast store is prepared under
    ``feast_workdir`` (default: a fresh folder under ``get_settings().feast_dir``). With
    ``replay`` (fraction > 0) the training set also holds that share of rows replayed
    from the stable version's reference sample (:func:`with_replay`), and with
    ``replay.distill`` every training row its score (:func:`with_champion_scores`); the eval
    set is the window's alone."""
    if not 0.0 < eval_fraction < 1.0:
        raise FeatureStageError(
            f"eval_fraction must be strictly between 0 and 1, got {eval_fraction}"
        )
    data = read_snapshot(dataset_dir)
    if feast_workdir is None:
        from kubeloop.settings import get_settings

        feast_workdir = Path(get_settings().feast_dir) / "runs" / uuid.uuid4().hex[:12]
    frame, repo = join_features(data, Path(feast_workdir))
    schema = data.schema
    columns = output_columns(schema)
    missing = frame[schema.feature_names].isna().any(axis=1)
    if missing.all():
        raise FeatureStageError(
            f"no event found a {schema.feature_view!r} snapshot within the feature view's TTL; "
            "are account_features.parquet and the transactions from the same period?"
        )
    # Events with no snapshot in force (e.g. a brand-new account) cannot be trained on as-is.
    frame = frame.loc[~missing, columns]
    train, evaluation, cutoff = time_split(frame, schema.timestamp, eval_fraction)
    replayed = None
    if replay is not None and replay.fraction > 0:
        train, replayed = with_replay(train, schema, replay)
    if replay is not None and replay.distill:
        train = with_champion_scores(train, schema, replay)
    for folder, part in ((train_dir, train), (eval_dir, evaluation)):
        Path(folder).mkdir(parents=True, exist_ok=True)
        part.to_parquet(Path(folder) / DATA_FILE, index=False)
    return FeaturesResult(
        train_rows=len(train),
        eval_rows=len(evaluation),
        cutoff=cutoff.isoformat(),
        feast_repo=repo,
        rows_without_features=int(missing.sum()),
        replay=replayed,
    )
