"""The results store: three Parquet tables (sweeps, trials, metrics), Hive-partitioned by study.

Layout::

    <root>/sweeps/study=<study>/<sweep_id>-<n>-<uuid>.parquet
    <root>/trials/study=<study>/...
    <root>/metrics/study=<study>/...
    <root>/_ray/<sweep_id>/          Ray Tune's experiment state (resume)

Rules: only the driver writes; rows arrive in batches; each batch is one new file written under a
hidden temporary name, flushed to disk and renamed into place, so readers never see half a file and
a crash leaves what was there intact. Files are never rewritten. Any Parquet reader can read a
table directory; :meth:`Store.read` also unifies the columns of files written by different sweeps.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.errors import StoreError

TABLES = ("sweeps", "trials", "metrics", "exploits")
# Row identity per table: the store never holds two rows with the same key.
KEYS = {
    "sweeps": ("study", "sweep_id"),
    "trials": ("study", "sweep_id", "trial_id"),
    "metrics": ("study", "sweep_id", "trial_id", "generation", "epoch"),
    "exploits": ("study", "sweep_id", "trial_id", "generation"),
}
# A key column missing from older files (written before it existed) reads as this value.
KEY_DEFAULTS = {"generation": 0}
TMP_SUFFIX = ".tmp"
TIMESTAMP = pa.timestamp("us", tz="UTC")

# Declared column types; other columns are typed from their values.
COLUMN_TYPES: dict[str, pa.DataType] = {
    "sweep_id": pa.string(), "trial_id": pa.string(), "status": pa.string(), "reason": pa.string(),
    "parent_sweep_id": pa.string(), "scheduler": pa.string(), "searcher": pa.string(),
    "config_yaml": pa.string(), "best_trial_id": pa.string(), "metric": pa.string(),
    "mode": pa.string(), "best_value": pa.float64(), "data_fingerprint": pa.string(),
    "orch_version": pa.string(), "started_at": TIMESTAMP, "ended_at": TIMESTAMP,
    "epoch": pa.int64(), "epochs": pa.int64(), "best_epoch": pa.int64(), "time_s": pa.float64(),
    "train_time_s": pa.float64(), "node": pa.string(), "stop_reason": pa.string(),
    "num_trials": pa.int64(), "dashboard_url": pa.string(),
}


def now() -> datetime:
    return datetime.now(timezone.utc)


def _column(name: str, values: list[Any], declared: pa.DataType | None) -> pa.Array:
    if declared is not None:
        try:
            return _declared(values, declared)
        except (TypeError, ValueError, pa.ArrowException):
            pass  # a value that does not fit the declared type: fall back to the values' own type
    return _inferred(values)


def _declared(values: list[Any], declared: pa.DataType) -> pa.Array:
    if pa.types.is_floating(declared):
        values = [None if v is None else float(v) for v in values]
    elif pa.types.is_integer(declared):
        values = [None if v is None else _exact_int(v) for v in values]
    elif pa.types.is_string(declared):
        values = [None if v is None else str(v) for v in values]
    return pa.array(values, type=declared)


def _exact_int(v: Any) -> int:
    if isinstance(v, bool) or int(v) != v:
        raise ValueError(f"{v!r} is not an integer")
    return int(v)


def _inferred(values: list[Any]) -> pa.Array:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    if present and all(isinstance(v, datetime) for v in present):
        return pa.array(values, type=TIMESTAMP)
    # Strings, mixed types and all-missing columns: text (a string column never conflicts later).
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def to_arrow(rows: list[dict[str, Any]], types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Rows -> an Arrow table with stable column types (declared ones first, then by value)."""
    declared = {**COLUMN_TYPES, **(types or {})}
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    arrays = {c: _column(c, [r.get(c) for r in rows], declared.get(c)) for c in columns}
    return pa.table(arrays)



def store_root(cfg, override: str | None = None) -> Path:
    """``--store`` beats the config's ``store.path``, which beats ``$ORCH_STORE``, else results/."""
    if override:
        return Path(override)
    if cfg is not None and cfg.store.path and cfg.store.path != "results":
        return Path(cfg.store.path)
    return Path(os.environ.get("ORCH_STORE") or (cfg.store.path if cfg is not None else "results"))


class Store:
    """A results store rooted at a local directory."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- paths ------------------------------------------------------------------------------------
    def table_dir(self, table: str, study: str | None = None) -> Path:
        if table not in TABLES:
            raise StoreError(f"unknown table {table!r}; valid: {', '.join(TABLES)}")
        d = self.root / table
        return d / f"study={study}" if study is not None else d

    def ray_dir(self) -> Path:
        """Where Ray Tune keeps experiment state (one sub-directory per sweep id)."""
        return self.root / "_ray"

    # -- writing ----------------------------------------------------------------------------------
    def append(self, table: str, study: str, rows: list[dict[str, Any]], sweep_id: str,
               types: dict[str, pa.DataType] | None = None) -> Path | None:
        """Write ``rows`` as one new file of ``table`` under ``study``. Atomic; never overwrites."""
        if not rows:
            return None
        rows = [{k: v for k, v in r.items() if k != "study"} for r in rows]
        arrow = to_arrow(rows, types)
        directory = self.table_dir(table, study)
        directory.mkdir(parents=True, exist_ok=True)
        stamp = now().strftime("%Y%m%dT%H%M%S%f")
        final = directory / f"{sweep_id}-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = directory / f".{final.name}{TMP_SUFFIX}"
        try:
            with open(tmp, "wb") as f:
                pq.write_table(arrow, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(directory)
        return final

    # -- reading ----------------------------------------------------------------------------------
    def files(self, table: str, study: str | None = None) -> list[Path]:
        d = self.table_dir(table, study)
        if not d.is_dir():
            return []
        pattern = "*.parquet" if study is not None else "study=*/*.parquet"
        return sorted(p for p in d.glob(pattern) if not p.name.startswith((".", "_")))

    def read(self, table: str, study: str | None = None, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """One table as a DataFrame (columns unified across files), optionally for one study."""
        files = self.files(table, study)
        if not files:
            return pd.DataFrame(columns=list(KEYS[table]))
        try:
            tables = _untyped_nulls([pq.read_table(f) for f in files])
            arrow = pa.concat_tables(tables, promote_options="permissive")
        except (OSError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
            raise StoreError(f"cannot read {self.table_dir(table)}: {err}") from None
        # The study lives in the partition directory name, as Hive partitioning has it.
        studies = [f.parent.name.split("=", 1)[1] for f in files]
        counts = [t.num_rows for t in tables]
        df = arrow.to_pandas()
        df.insert(0, "study", [s for s, n in zip(studies, counts, strict=True) for _ in range(n)])
        for col, default in KEY_DEFAULTS.items():
            if col in KEYS[table]:
                df[col] = df[col].fillna(default).astype("int64") if col in df.columns else default
        df = df.drop_duplicates(subset=[k for k in KEYS[table] if k in df.columns], keep="first")
        if columns is not None:
            df = df[[c for c in columns if c in df.columns]]
        return df.reset_index(drop=True)

    def sweeps(self, study: str | None = None) -> pd.DataFrame:
        df = self.read("sweeps", study)
        if "ended_at" in df.columns and len(df):
            df = df.sort_values("ended_at", ascending=False).reset_index(drop=True)
        return df

    def trials(self, study: str | None = None) -> pd.DataFrame:
        return self.read("trials", study)

    def metrics(self, study: str | None = None) -> pd.DataFrame:
        return self.read("metrics", study)

    def existing_keys(self, table: str, study: str, sweep_id: str) -> set[tuple]:
        """Keys of the rows already stored for one sweep (resume uses this to never write twice)."""
        files = [f for f in self.files(table, study) if f.name.startswith(f"{sweep_id}-")]
        if not files:
            return set()
        key_cols = [k for k in KEYS[table] if k != "study"]
        keys: set[tuple] = set()
        for f in files:
            present = set(pq.read_schema(f).names)
            t = pq.read_table(f, columns=[c for c in key_cols if c in present])
            columns = [t.column(c).to_pylist() if c in present else [KEY_DEFAULTS.get(c)] * t.num_rows
                       for c in key_cols]
            keys.update(zip(*columns, strict=True))
        return keys


def _untyped_nulls(tables: list[pa.Table]) -> list[pa.Table]:
    """Give a column that holds no value in one file the type the other files hold.

    An all-missing column is written as text (see ``_inferred``); without this, a later file with
    numbers in that column would make the tables impossible to combine.
    """
    typed: dict[str, pa.DataType] = {}
    for t in tables:
        for f, col in zip(t.schema, t.columns, strict=True):
            if col.null_count < len(col):
                typed.setdefault(f.name, f.type)
    out = []
    for t in tables:
        for i, (f, col) in enumerate(zip(t.schema, t.columns, strict=True)):
            want = typed.get(f.name)
            if want is not None and f.type != want and col.null_count == len(col):
                t = t.set_column(i, pa.field(f.name, want), pa.nulls(len(col), type=want))
        out.append(t)
    return out


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
