"""Preparing a Feast store from ``feature_repo/`` and building point-in-time training sets.

The definitions in ``feature_repo/`` are copied into a working folder (one per run,
under ``get_settings().feast_dir``) together with the account snapshots, so parallel
runs and tests never share a registry or an online store.

``feast apply`` only depends on the definitions: with a registry and online store on
local files (the embedded default) it runs once per content of the definitions, into a
template folder under ``feast_dir/applied/``, and each run copies the applied registry
and the empty online store from there instead of applying again. A registry or online
store elsewhere (the cluster's S3 registry and Redis) is applied every time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import pandas as pd

from kubeloop.features.feast_import import load_feast

ACCOUNT_FEATURES_PATH = Path("data") / "account_features.parquet"
DEFINITIONS = "definitions.py"
_REPO_FILES = (DEFINITIONS, "feature_store.yaml", ".feastignore")
# Feast finds the event time of an entity data frame by this column name.
ENTITY_TIMESTAMP = "event_timestamp"


class FeatureStoreError(RuntimeError):
    """The Feast repository or its data cannot be prepared; the message says why."""


def feature_repo_dir() -> Path:
    """The Feast definitions: ``settings.feast_repo``, else the checkout's ``feature_repo/``."""
    from kubeloop.settings import get_settings

    configured = Path(get_settings().feast_repo)
    if (configured / DEFINITIONS).exists():
        return configured
    fallback = Path(__file__).resolve().parents[2] / "feature_repo"
    if (fallback / DEFINITIONS).exists():
        return fallback
    raise FeatureStoreError(
        f"no Feast repository: neither {configured} nor {fallback} holds {DEFINITIONS} "
        "(set KUBELOOP_FEAST_REPO)"
    )


def _load_definitions(workdir: Path) -> list:
    """Every Feast object defined in the working copy's ``definitions.py``."""
    load_feast()
    from feast import Entity, FeatureService, FeatureView, Project
    from feast.data_source import DataSource

    name = f"kubeloop_feast_definitions_{abs(hash(str(workdir)))}"
    spec = importlib.util.spec_from_file_location(name, workdir / DEFINITIONS)
    if spec is None or spec.loader is None:
        raise FeatureStoreError(f"cannot load {workdir / DEFINITIONS}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    kinds = (Project, Entity, DataSource, FeatureView, FeatureService)
    return [obj for obj in vars(module).values() if isinstance(obj, kinds)]


def prepare_feature_store(
    workdir: str | Path,
    account_features: pd.DataFrame,
    *,
    repo: Path | None = None,
    materialize_until: pd.Timestamp | None = None,
):
    """Copies the definitions into ``workdir``, writes the snapshots, applies, and
    materializes the snapshots' whole time range into the SQLite online store (with
    ``materialize_until``, only the snapshots stamped at or before it: the rest are
    written later, as their day comes; see :mod:`kubeloop.features.feeder`).

    Returns the ready :class:`feast.FeatureStore`.
    """
    load_feast()
    from feast import FeatureStore

    if account_features.empty:
        raise FeatureStoreError("account features are empty: nothing to apply or materialize")
    # materialize_incremental would skip rows older than now - ttl on its first run;
    # an explicit range covers historical data too (end is exclusive, hence the +1s).
    start = account_features[ENTITY_TIMESTAMP].min()
    last = account_features[ENTITY_TIMESTAMP].max()
    if materialize_until is not None:
        last = min(last, pd.Timestamp(materialize_until))
    if last < start:  # refused before anything is written
        raise FeatureStoreError(f"no account snapshot is stamped at or before {last}")
    repo = repo or feature_repo_dir()
    workdir = Path(workdir).resolve()
    (workdir / ACCOUNT_FEATURES_PATH).parent.mkdir(parents=True, exist_ok=True)
    _copy_definitions(repo, workdir)
    account_features.to_parquet(workdir / ACCOUNT_FEATURES_PATH, index=False)
    applied = _applied_template(repo)
    if applied is not None:
        template, state = applied
        for name in state:
            shutil.copy2(template / name, workdir / name)
    store = FeatureStore(repo_path=str(workdir))
    if applied is None:
        store.apply(_load_definitions(workdir))
    end = (last + timedelta(seconds=1)).to_pydatetime()
    store.materialize(start_date=start.to_pydatetime(), end_date=end)
    return store


def _local_state(repo: Path) -> list[str] | None:
    """The registry and online store files ``feature_store.yaml`` keeps in the repository
    folder, or None when either lives elsewhere."""
    import yaml

    config = yaml.safe_load((repo / "feature_store.yaml").read_text()) or {}
    registry = config.get("registry")
    registry = registry.get("path") if isinstance(registry, dict) else registry
    online = config.get("online_store") or {}
    if not isinstance(registry, str) or "://" in registry or Path(registry).is_absolute():
        return None
    if not isinstance(online, dict) or online.get("type") != "sqlite":
        return None
    path = online.get("path", "data/online_store.db")
    return None if Path(path).is_absolute() else [registry, path]


def _copy_definitions(repo: Path, folder: Path) -> None:
    for name in _REPO_FILES:
        if (repo / name).exists():
            shutil.copy2(repo / name, folder / name)


def _applied_template(repo: Path) -> tuple[Path, list[str]] | None:
    """A folder holding the definitions applied once (registry and empty online store),
    keyed by their content, and those state files; None when the state is not local
    files (apply every time)."""
    from kubeloop.settings import get_settings

    state = _local_state(repo)
    if state is None:
        return None
    digest = hashlib.sha256()
    for name in _REPO_FILES:
        if (repo / name).exists():
            digest.update(name.encode() + b"\0" + (repo / name).read_bytes())
    root = Path(get_settings().feast_dir) / "applied"
    template = root / digest.hexdigest()[:16]
    if all((template / name).exists() for name in state):
        return template, state
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".applying-", dir=root))
    _copy_definitions(repo, building)
    load_feast()
    from feast import FeatureStore

    FeatureStore(repo_path=str(building)).apply(_load_definitions(building))
    try:  # another process may have built the same template meanwhile: keep one
        os.rename(building, template)
    except OSError:
        shutil.rmtree(building, ignore_errors=True)
    return template, state


def training_frame(store, entity_df: pd.DataFrame, feature_service: str) -> pd.DataFrame:
    """Point-in-time join of ``entity_df`` (entity key, ``event_timestamp``, anything else)
    with the feature service's views: each row gets the latest snapshot at or before its
    own event time and within the view's TTL, never a later one."""
    if ENTITY_TIMESTAMP not in entity_df.columns:
        raise FeatureStoreError(f"entity data frame needs an {ENTITY_TIMESTAMP!r} column")
    try:
        service = store.get_feature_service(feature_service)
    except Exception as exc:  # feast raises FeatureServiceNotFoundException
        raise FeatureStoreError(
            f"feature service {feature_service!r} is not in the Feast registry: {exc}"
        ) from exc
    order = entity_df.reset_index(drop=True).assign(_row=range(len(entity_df)))
    joined = store.get_historical_features(entity_df=order, features=service).to_df()
    # Feast's file offline store drops entity rows older than any feature row; join the
    # features back onto every input row (in input order) so none disappears silently.
    added = [c for c in joined.columns if c not in order.columns]
    result = order.merge(joined[["_row", *added]], on="_row", how="left", validate="one_to_one")
    return result.drop(columns="_row")
