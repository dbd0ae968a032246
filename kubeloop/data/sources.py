"""Data sources: read a dataset, coerce it to its declared schema, snapshot a time window.

A source URI is one of:

- a local CSV or Parquet file, or a folder holding ``transactions.parquet`` (or
  ``.csv``) and optionally ``account_features.parquet``, ``scenario.json`` and
  ``schema.json`` (what :meth:`kubeloop.data.fraud.FraudData.write` makes);
- the same on S3-compatible storage: ``s3://bucket/key`` (a file) or
  ``s3://bucket/prefix`` (a folder), read with the ``minio`` client and
  ``get_settings().s3``;
- the built-in example ``example://fraud/<scenario>?days=14&accounts=2000&seed=0``.

The schema comes from ``schema_uri`` (a JSON or YAML file, local or ``s3://``); an
empty ``schema_uri`` means the ``schema.json`` shipped next to the data, else
:data:`kubeloop.data.fraud.FRAUD_SCHEMA`. Every problem raises :class:`SourceError`
naming the location and, where it applies, the column.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pandas as pd

from kubeloop.data.fraud import (
    ACCOUNTS_FILE,
    FRAUD_SCHEMA,
    SCENARIO_FILE,
    SCHEMA_FILE,
    TRANSACTIONS_FILE,
)
from kubeloop.data.schema import DatasetSchema, SchemaError

DATA_SUFFIXES = (".parquet", ".pq", ".csv")
# Account snapshots are stamped with this column (the Feast FileSource's timestamp field).
SNAPSHOT_TIMESTAMP = "event_timestamp"
SNAPSHOT_CREATED = "created"
DEFAULT_S3_TIMEOUT_S = 10.0


class SourceError(ValueError):
    """A source cannot be read or does not match its schema; the message says why."""


@dataclass
class SourceData:
    """One dataset as read from a source and coerced to its schema."""

    transactions: pd.DataFrame
    schema: DatasetSchema
    account_features: pd.DataFrame | None = None
    scenario: dict[str, Any] | None = None
    uri: str = ""


# --- reading files ------------------------------------------------------------------------
def _read_table(path: Path, label: str) -> pd.DataFrame:
    if not path.exists():
        raise SourceError(f"{label}: {path} does not exist")
    if path.stat().st_size == 0:
        raise SourceError(f"{label}: {path} is an empty file")
    try:
        if path.suffix == ".csv":
            frame = pd.read_csv(path)
        elif path.suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            raise SourceError(
                f"{label}: {path} is neither CSV nor Parquet (suffix {path.suffix!r})"
            )
    except SourceError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for corrupt files
        raise SourceError(f"{label}: cannot read {path}: {exc}") from exc
    if frame.empty:
        raise SourceError(f"{label}: {path} holds no rows")
    return frame


def _find_transactions(folder: Path) -> Path:
    for name in (TRANSACTIONS_FILE, "transactions.csv"):
        if (folder / name).exists():
            return folder / name
    raise SourceError(
        f"source folder {folder} holds neither {TRANSACTIONS_FILE} nor transactions.csv"
    )


def _load_schema_file(path: Path, label: str) -> DatasetSchema:
    if path.exists() and path.stat().st_size == 0:
        raise SourceError(f"schema {label} is an empty file")
    try:
        return DatasetSchema.from_file(path)
    except SchemaError as exc:
        raise SourceError(f"malformed schema {label}: {exc}") from exc


# --- S3 -----------------------------------------------------------------------------------
def _s3_client(timeout_s: float):
    import urllib3
    from minio import Minio

    from kubeloop.settings import get_settings

    s3 = get_settings().s3
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
        retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
    )
    return Minio(
        s3.endpoint,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        secure=s3.secure,
        region=s3.region or "us-east-1",
        http_client=http,
    )


def _s3_download(uri: str, dest: Path, timeout_s: float) -> Path:
    """Copies ``s3://bucket/key`` (one object) or ``s3://bucket/prefix`` (a folder) to ``dest``."""
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket:
        raise SourceError(f"{uri}: an s3:// location needs a bucket name")
    client = _s3_client(timeout_s)
    try:
        if key.endswith(DATA_SUFFIXES + (".json", ".yaml", ".yml")):
            target = dest / Path(key).name
            client.fget_object(bucket, key, str(target))
            return target
        prefix = key.rstrip("/") + "/" if key else ""
        folder = dest / (Path(key).name or bucket)
        found = False
        for obj in client.list_objects(bucket, prefix=prefix, recursive=False):
            if obj.is_dir:
                continue
            found = True
            client.fget_object(bucket, obj.object_name, str(folder / Path(obj.object_name).name))
        if not found:
            raise SourceError(f"{uri}: no objects under this prefix")
        return folder
    except SourceError:
        raise
    except Exception as exc:  # urllib3 MaxRetryError, minio S3Error, timeouts
        endpoint = client._base_url.host  # noqa: SLF001 - the endpoint makes the error actionable
        raise SourceError(f"cannot read {uri} from S3 endpoint {endpoint}: {exc}") from exc


# --- coercion -----------------------------------------------------------------------------
def _examples(values: pd.Series, n: int = 3) -> list[Any]:
    return values.drop_duplicates().head(n).tolist()


# Every ISO 8601 variant (``T`` or space, seconds and fractions optional, ``Z`` or an
# offset) is one unambiguous format family, parsed with pandas' "ISO8601" parser.
_ISO_8601 = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d+)?)?)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)?",
    re.IGNORECASE,
)
ISO_8601_FAMILY = "ISO 8601 (YYYY-MM-DD...)"


def timestamp_format_family(text: str) -> str:
    """The format family of one timestamp string: ISO 8601 in any variant, or else the
    shape of its numbers and words (``04/03/2024 11:00`` → ``N/N/YYYY N:N``)."""
    text = text.strip()
    if _ISO_8601.fullmatch(text):
        return ISO_8601_FAMILY
    words = re.sub(r"[^\W\d_]+", "A", text)  # month names, AM/PM, zone names
    return re.sub(r"\d+", lambda m: "YYYY" if len(m.group()) == 4 else "N", words)


def _timestamp_format(series: pd.Series, name: str, label: str) -> str:
    """The one format ``series`` (text) is parsed with; a column mixing format families
    (``2024-03-04 10:00`` next to ``04/03/2024 11:00``) is refused, since reading each
    value by its own guess silently swaps day and month in some of them."""
    values = series.dropna().drop_duplicates()
    iso = values.str.strip().str.fullmatch(_ISO_8601)  # vectorised: the usual case
    if iso.all():
        return "ISO8601"
    examples = {ISO_8601_FAMILY: values[iso].iloc[0]} if iso.any() else {}
    for value in values[~iso]:
        examples.setdefault(timestamp_format_family(value), value)
    if len(examples) > 1:
        shown = "; ".join(f"{family} e.g. {value!r}" for family, value in examples.items())
        raise SourceError(
            f"{label}: column {name!r} mixes timestamp formats ({shown}); write every value "
            "in one format, preferably ISO 8601"
        )
    from pandas.tseries.api import guess_datetime_format

    # one non-ISO format: the one pandas reads the first value with, for every value
    return guess_datetime_format(values.iloc[0]) or "mixed"


def _coerce_column(series: pd.Series, dtype: str, name: str, label: str) -> pd.Series:
    present = series.notna()
    if dtype in ("float", "int"):
        numeric = pd.to_numeric(series, errors="coerce")
        bad = present & numeric.isna()
        if bad.any():
            raise SourceError(
                f"{label}: column {name!r} is declared {dtype} but holds non-numeric values, "
                f"e.g. {_examples(series[bad])}"
            )
        if dtype == "float":
            return numeric.astype("float64")
        frac = present & (numeric.fillna(0) % 1 != 0)
        if frac.any():
            raise SourceError(
                f"{label}: column {name!r} is declared int but holds fractional values, "
                f"e.g. {_examples(series[frac])}"
            )
        return numeric.astype("int64") if not numeric.isna().any() else numeric.astype("Int64")
    if dtype == "bool":
        # bool, 0/1 and "true"/"false"/"1"/"0" (as CSV readers produce them)
        mapping = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}
        mapped = series.map(lambda v: mapping.get(str(v).strip().lower()) if pd.notna(v) else None)
        bad = present & mapped.isna()
        if bad.any():
            raise SourceError(
                f"{label}: column {name!r} is declared bool but holds {_examples(series[bad])}"
            )
        return mapped.astype("boolean")
    if dtype == "timestamp":
        try:
            parsed = pd.to_datetime(series, utc=True, errors="coerce", format="mixed")
        except (TypeError, ValueError) as exc:
            raise SourceError(f"{label}: column {name!r} is declared timestamp: {exc}") from exc
        bad = present & parsed.isna()
        if bad.any() or pd.api.types.is_numeric_dtype(series):
            shown = series[bad] if bad.any() else series
            raise SourceError(
                f"{label}: column {name!r} is declared timestamp but holds {_examples(shown)}"
            )
        if series[present].map(type).eq(str).all():  # text, as CSV and JSON give it
            fmt = _timestamp_format(series[present], name, label)
            parsed = pd.to_datetime(series, utc=True, errors="coerce", format=fmt)
            bad = present & parsed.isna()
            if bad.any():  # e.g. 25/03/2024 where the first value read as mm/dd/yyyy
                raise SourceError(
                    f"{label}: column {name!r} holds timestamps that do not follow the format "
                    f"of its first value {series[present].iloc[0]!r} ({fmt}), "
                    f"e.g. {_examples(series[bad])}"
                )
        return parsed.astype("datetime64[us, UTC]")
    # category / string: text, with missing values kept missing
    return series.astype("string").astype(object).where(present, None)


def coerce(
    frame: pd.DataFrame, schema: DatasetSchema, columns: list[str], label: str
) -> pd.DataFrame:
    """Returns ``frame`` with ``columns`` coerced to their declared dtypes, in that order."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SourceError(
            f"{label}: missing columns {missing} declared by schema {schema.name!r} "
            f"(found {list(frame.columns)})"
        )
    empty = [c for c in columns if frame[c].isna().all()]
    if empty:
        raise SourceError(f"{label}: columns {empty} hold only missing values (NaN)")
    out = pd.DataFrame(index=frame.index)
    for name in columns:
        spec = schema.column(name)
        out[name] = _coerce_column(frame[name], spec.dtype, name, label)
    return out.reset_index(drop=True)


def _coerce_accounts(frame: pd.DataFrame, schema: DatasetSchema, label: str) -> pd.DataFrame:
    view = [c.name for c in schema.view_features]
    frame = frame.copy()
    if SNAPSHOT_CREATED not in frame.columns and SNAPSHOT_TIMESTAMP in frame.columns:
        frame[SNAPSHOT_CREATED] = frame[SNAPSHOT_TIMESTAMP]
    cols = [schema.entity, SNAPSHOT_TIMESTAMP, *view, SNAPSHOT_CREATED]
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise SourceError(
            f"{label}: missing columns {missing} (the {schema.feature_view!r} feature view)"
        )
    empty = [c for c in cols if frame[c].isna().all()]
    if empty:
        raise SourceError(f"{label}: columns {empty} hold only missing values (NaN)")
    out = pd.DataFrame(
        {
            schema.entity: _coerce_column(frame[schema.entity], "int", schema.entity, label),
            SNAPSHOT_TIMESTAMP: _coerce_column(
                frame[SNAPSHOT_TIMESTAMP], "timestamp", SNAPSHOT_TIMESTAMP, label
            ),
        }
    )
    for name in view:
        out[name] = _coerce_column(frame[name], "float", name, label)
    out[SNAPSHOT_CREATED] = _coerce_column(
        frame[SNAPSHOT_CREATED], "timestamp", SNAPSHOT_CREATED, label
    )
    return out.reset_index(drop=True)


# --- windows ------------------------------------------------------------------------------
def parse_time(value: str, what: str) -> pd.Timestamp | None:
    """ISO-8601 → UTC timestamp; an empty string means unbounded (None)."""
    if not value:
        return None
    try:
        ts = pd.Timestamp(value)
    except ValueError as exc:
        raise SourceError(f"{what} {value!r} is not an ISO-8601 time: {exc}") from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def in_window(times: pd.Series, start: pd.Timestamp | None, end: pd.Timestamp | None) -> pd.Series:
    keep = pd.Series(True, index=times.index)
    if start is not None:
        keep &= times >= start
    if end is not None:
        keep &= times < end
    return keep


# --- the public entry points --------------------------------------------------------------
def resolve_schema(
    schema_uri: str, data_folder: Path | None, timeout_s: float = DEFAULT_S3_TIMEOUT_S
) -> DatasetSchema:
    """The declared schema: ``schema_uri``, else ``schema.json`` next to the data, else fraud's."""
    if schema_uri:
        if schema_uri.startswith("s3://"):
            with tempfile.TemporaryDirectory(prefix="kubeloop-schema-") as tmp:
                return _load_schema_file(_s3_download(schema_uri, Path(tmp), timeout_s), schema_uri)
        path = Path(schema_uri.removeprefix("file://"))
        if not path.exists():
            raise SourceError(f"schema file {schema_uri} does not exist")
        return _load_schema_file(path, schema_uri)
    if data_folder is not None and (data_folder / SCHEMA_FILE).exists():
        return _load_schema_file(data_folder / SCHEMA_FILE, str(data_folder / SCHEMA_FILE))
    return FRAUD_SCHEMA


def _read_example(uri: str, schema_uri: str) -> SourceData:
    from kubeloop.data.fraud import generate

    parsed = urlparse(uri)
    scenario = parsed.path.strip("/")
    if parsed.netloc != "fraud" or not scenario:
        raise SourceError(
            f"{uri}: example sources look like example://fraud/<scenario>?days=14&accounts=2000&seed=0"
        )
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    unknown = set(query) - {"days", "accounts", "seed"}
    if unknown:
        raise SourceError(f"{uri}: unknown parameters {sorted(unknown)} (use days, accounts, seed)")
    try:
        data = generate(
            scenario,
            days=float(query.get("days", 14)),
            n_accounts=int(query.get("accounts", 2000)),
            seed=int(query.get("seed", 0)),
        )
    except ValueError as exc:
        raise SourceError(f"{uri}: {exc}") from exc
    schema = resolve_schema(schema_uri, None)
    from dataclasses import asdict

    return _finish(data.transactions, data.accounts, asdict(data.truth), schema, uri)


def _read_local(path: Path, schema_uri: str, uri: str, timeout_s: float) -> SourceData:
    if path.is_dir():
        folder, tx_path = path, _find_transactions(path)
    elif path.exists():
        folder, tx_path = path.parent, path
    else:
        raise SourceError(f"source {uri} does not exist")
    schema = resolve_schema(schema_uri, folder, timeout_s)
    transactions = _read_table(tx_path, f"source {uri}")
    accounts = None
    if path.is_dir() and (folder / ACCOUNTS_FILE).exists():
        accounts = _read_table(folder / ACCOUNTS_FILE, f"source {uri} ({ACCOUNTS_FILE})")
    scenario = None
    if path.is_dir() and (folder / SCENARIO_FILE).exists():
        scenario = json.loads((folder / SCENARIO_FILE).read_text())
    return _finish(transactions, accounts, scenario, schema, uri)


def _finish(
    transactions: pd.DataFrame,
    accounts: pd.DataFrame | None,
    scenario: dict[str, Any] | None,
    schema: DatasetSchema,
    uri: str,
) -> SourceData:
    label = f"source {uri}"
    columns = [c.name for c in schema.source_columns]
    # Feature-view features may arrive already joined; keep them when they do.
    view = [c.name for c in schema.view_features]
    joined = [c for c in view if c in transactions.columns]
    missing = [c for c in columns if c not in transactions.columns]
    if missing:
        raise SourceError(
            f"{label}: missing columns {missing} declared by schema {schema.name!r} "
            f"(found {list(transactions.columns)})"
        )
    if view and accounts is None and len(joined) < len(view):
        raise SourceError(
            f"{label}: schema {schema.name!r} takes {view} from feature view {schema.feature_view!r}, "
            f"but the source has no {ACCOUNTS_FILE} and lacks columns {sorted(set(view) - set(joined))}"
        )
    ordered = [c.name for c in schema.columns if c.name in set(columns) | set(joined)]
    tx = coerce(transactions, schema, ordered, label)
    acc = (
        _coerce_accounts(accounts, schema, f"{label} ({ACCOUNTS_FILE})")
        if accounts is not None and view
        else None
    )
    return SourceData(
        transactions=tx, schema=schema, account_features=acc, scenario=scenario, uri=uri
    )


def read_source(
    uri: str, schema_uri: str = "", *, timeout_s: float = DEFAULT_S3_TIMEOUT_S
) -> SourceData:
    """Reads a whole source (see the module docstring for the URI forms)."""
    if not uri:
        raise SourceError("source_uri is empty")
    if uri.startswith("example://"):
        return _read_example(uri, schema_uri)
    if uri.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="kubeloop-source-") as tmp:
            local = _s3_download(uri, Path(tmp), timeout_s)
            if not schema_uri and local.is_file():
                # A schema shipped next to an S3 object lives under the same prefix.
                sibling = uri.rsplit("/", 1)[0] + "/" + SCHEMA_FILE
                with contextlib.suppress(SourceError):
                    _s3_download(sibling, local.parent, timeout_s)
            return _read_local(local, schema_uri, uri, timeout_s)
    if "://" in uri and not uri.startswith("file://"):
        raise SourceError(
            f"unsupported source {uri!r}: use a local path, s3://bucket/key or example://fraud/<scenario>"
        )
    return _read_local(Path(uri.removeprefix("file://")), schema_uri, uri, timeout_s)


def select_window(data: SourceData, window_start: str, window_end: str) -> SourceData:
    """Keeps transactions in ``[window_start, window_end)`` (empty = unbounded).

    Account snapshots are kept up to ``window_end`` (earlier ones too: the point-in-time
    join needs the snapshot in force at each transaction's time, which may predate the window).
    """
    start, end = parse_time(window_start, "window_start"), parse_time(window_end, "window_end")
    if start is not None and end is not None and start >= end:
        raise SourceError(
            f"empty window: window_start {window_start} is not before window_end {window_end}"
        )
    tx = data.transactions
    tx = tx[in_window(tx[data.schema.timestamp], start, end)].reset_index(drop=True)
    if tx.empty:
        raise SourceError(
            f"window [{window_start or '-inf'}, {window_end or '+inf'}) of {data.uri} holds no rows"
        )
    acc = data.account_features
    if acc is not None:
        acc = acc[in_window(acc[SNAPSHOT_TIMESTAMP], None, end)].reset_index(drop=True)
    return SourceData(
        transactions=tx,
        schema=data.schema,
        account_features=acc,
        scenario=data.scenario,
        uri=data.uri,
    )


# --- snapshots ----------------------------------------------------------------------------
def _column_bytes(series: pd.Series) -> bytes:
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(series):
        values = series.astype("datetime64[us, UTC]").to_numpy(dtype="datetime64[us]").astype("<i8")
        return values.tobytes() + series.isna().to_numpy().tobytes()
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        mask = series.isna().to_numpy()
        values = series.astype("float64").fillna(0).to_numpy().astype("<f8")
        return values.tobytes() + mask.tobytes()
    return "\x1f".join(
        "\x00" if v is None or v is pd.NA else str(v) for v in series.tolist()
    ).encode()


def frame_hash(frame: pd.DataFrame, sort_by: list[str]) -> str:
    """sha256 of a canonical serialization: rows sorted by ``sort_by``, columns by name."""
    frame = frame.sort_values(sort_by, kind="mergesort").reset_index(drop=True)
    digest = hashlib.sha256()
    for name in sorted(frame.columns):
        digest.update(f"{name}:{frame[name].dtype}:{len(frame)}\n".encode())
        digest.update(_column_bytes(frame[name]))
    return digest.hexdigest()


def data_hash(data: SourceData) -> str:
    """The data version: one sha256 over the schema and every table of the snapshot."""
    schema = data.schema
    keys = [schema.timestamp] + ([schema.id_column] if schema.id_column else [schema.entity])
    parts = {
        "schema": hashlib.sha256(
            json.dumps(schema.model_dump(), sort_keys=True).encode()
        ).hexdigest(),
        "transactions": frame_hash(data.transactions, keys),
    }
    if data.account_features is not None:
        parts["account_features"] = frame_hash(
            data.account_features, [schema.entity, SNAPSHOT_TIMESTAMP]
        )
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def write_snapshot(data: SourceData, folder: str | Path) -> Path:
    """Writes the dataset folder of the pipeline contract (see docs/contracts.md)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data.transactions.to_parquet(folder / TRANSACTIONS_FILE, index=False)
    if data.account_features is not None:
        data.account_features.to_parquet(folder / ACCOUNTS_FILE, index=False)
    if data.scenario is not None:
        (folder / SCENARIO_FILE).write_text(json.dumps(data.scenario, indent=2))
    (folder / SCHEMA_FILE).write_text(data.schema.to_json())
    return folder


def read_snapshot(folder: str | Path) -> SourceData:
    """Reads a dataset folder written by :func:`write_snapshot` (the pipeline's artifact)."""
    folder = Path(folder)
    if not (folder / SCHEMA_FILE).exists():
        raise SourceError(
            f"dataset {folder} has no {SCHEMA_FILE}; was it written by the ingest stage?"
        )
    schema = _load_schema_file(folder / SCHEMA_FILE, str(folder / SCHEMA_FILE))
    tx = _read_table(folder / TRANSACTIONS_FILE, f"dataset {folder}")
    acc = None
    if (folder / ACCOUNTS_FILE).exists():
        acc = _read_table(folder / ACCOUNTS_FILE, f"dataset {folder} ({ACCOUNTS_FILE})")
    scenario = (
        json.loads((folder / SCENARIO_FILE).read_text())
        if (folder / SCENARIO_FILE).exists()
        else None
    )
    return SourceData(
        transactions=tx, schema=schema, account_features=acc, scenario=scenario, uri=str(folder)
    )


__all__ = [
    "SourceData",
    "SourceError",
    "coerce",
    "data_hash",
    "read_snapshot",
    "read_source",
    "resolve_schema",
    "select_window",
    "write_snapshot",
]
