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

Compaction (``orch store compact``, :mod:`orchestrator.store.maintenance`) replaces the small files of a
partition by merged ``compacted-*.parquet`` files. A partition's ``_compacted.json`` names, for
each compaction in progress, the merged files and the files they supersede; orch's readers
(:meth:`Store.files`) read the merged files only once all of them are in place, and then skip the
superseded ones, so they never see a row twice or miss one while a compaction publishes.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator.errors import StoreError, UserError
from orchestrator.names import check_name, inside
from orchestrator.store import fs, layout
from orchestrator.store.fs import AnyPath, ObjectPath

if TYPE_CHECKING:
    from orchestrator.config.schema import SweepConfig

TABLES = ("sweeps", "trials", "metrics", "exploits", "decisions")
# Row identity per table: the store never holds two rows with the same key.
KEYS = {
    "sweeps": ("study", "sweep_id"),
    "trials": ("study", "sweep_id", "trial_id"),
    "metrics": ("study", "sweep_id", "trial_id", "generation", "epoch"),
    "exploits": ("study", "sweep_id", "trial_id", "generation"),
    "decisions": ("study", "decided_at"),
}
# A key column missing from older files (written before it existed) reads as this value.
KEY_DEFAULTS = {"generation": 0}
TMP_SUFFIX = ".tmp"
# Compaction: merged files are named compacted-<stamp>-<uuid>-<part>.parquet, and each partition
# may hold a manifest of the compactions being published (see the module docstring).
MERGED_PREFIX = "compacted-"
MANIFEST = "_compacted.json"
_LIST_ATTEMPTS = 100  # a partition listed while a compaction publishes is listed again
_READ_ATTEMPTS = 20  # a file deleted by a compaction between listing and reading: read again
TIMESTAMP = pa.timestamp("us", tz="UTC")

# Declared column types; other columns are typed from their values.
COLUMN_TYPES: dict[str, pa.DataType] = {
    "sweep_id": pa.string(), "trial_id": pa.string(), "status": pa.string(), "reason": pa.string(),
    "parent_sweep_id": pa.string(), "scheduler": pa.string(), "searcher": pa.string(),
    "config_yaml": pa.string(), "config_sig": pa.string(), "best_trial_id": pa.string(), "metric": pa.string(),
    "mode": pa.string(), "best_value": pa.float64(), "data_fingerprint": pa.string(),
    "orch_version": pa.string(), "started_at": TIMESTAMP, "ended_at": TIMESTAMP,
    "epoch": pa.int64(), "epochs": pa.int64(), "best_epoch": pa.int64(), "n_params": pa.int64(), "time_s": pa.float64(),
    "train_time_s": pa.float64(), "node": pa.string(), "stop_reason": pa.string(),
    "num_trials": pa.int64(), "dashboard_url": pa.string(),
}


def new_sweep_id(now: datetime | None = None) -> str:
    """A sweep's id: its start time (UTC), sortable, and 4 random hex digits."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


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



def store_root(cfg: SweepConfig | None, override: str | None = None) -> AnyPath:
    """``--store`` beats the config's ``store.path``, which beats ``$ORCH_STORE``, else results/.

    A local directory (a :class:`Path`) or a prefix in object storage (``s3://bucket/prefix``,
    ``gs://bucket/prefix``: an :class:`~orchestrator.store.fs.ObjectPath`).
    """
    if override:
        return fs.as_path(override)
    if cfg is not None and cfg.store.path and cfg.store.path != "results":
        return fs.as_path(cfg.store.path)
    return fs.as_path(os.environ.get("ORCH_STORE") or (cfg.store.path if cfg is not None else "results"))


class Store:
    """A results store rooted at a local directory or an object storage prefix."""

    def __init__(self, root: str | os.PathLike[str] | ObjectPath) -> None:
        self.root: Any = fs.as_path(root)

    @property
    def remote(self) -> bool:
        return isinstance(self.root, ObjectPath)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- paths ------------------------------------------------------------------------------------
    def table_dir(self, table: str, study: str | None = None) -> Path:
        if table not in TABLES:
            raise StoreError(f"unknown table {table!r}; valid: {', '.join(TABLES)}")
        d = self.root / table
        return d / f"study={check_name(study, 'study')}" if study is not None else d

    def ray_dir(self) -> Path:
        """Where Ray Tune keeps experiment state (one sub-directory per sweep id)."""
        return self.root / "_ray"

    def sweep_dir(self, sweep_id: str, key: str = "sweep id") -> Path:
        """Ray Tune's experiment directory of one sweep (``<store>/_ray/<sweep_id>``), checked."""
        return self.path("_ray", check_name(sweep_id, key))

    def path(self, *parts: str) -> Path:
        """``<store>/<parts...>``, checked to resolve inside the store (see :func:`names.inside`)."""
        return inside(self.root, self.root.joinpath(*parts))

    def check_writable(self) -> None:
        """Raise a one-line UserError unless the store is a writable directory, or can be created.

        Run before a sweep starts Ray, so a bad ``--store`` costs seconds, not a Ray start-up. It
        writes nothing: a store that does not exist yet is created by the first write.
        """
        root = self.root
        hint = "(--store, store.path or $ORCH_STORE)"
        if isinstance(root, ObjectPath):
            try:
                bucket = root.parents[-1] if root.key else root
                if not bucket.exists():  # (the bucket answers, with these credentials)
                    raise UserError(f"store: {root}: no bucket {bucket.bucket!r} at this endpoint {hint}")
                if root.is_file():
                    raise UserError(f"store: {root} is an object, not a prefix {hint}")
            except StoreError as err:
                raise UserError(f"store: {err} {hint}") from None
            return
        if root.exists() and not root.is_dir():
            raise UserError(f"store: {root} is a file, not a directory {hint}")
        existing = next(p for p in (root, *root.absolute().parents) if p.exists())
        if not existing.is_dir():
            raise UserError(f"store: cannot create {root}: {existing} is a file {hint}")
        if not os.access(existing, os.W_OK | os.X_OK):
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
            reason = "Read-only file system" if read_only else "Permission denied"
            raise UserError(f"store: cannot write to {root}: {reason} {hint}")

    # -- writing ----------------------------------------------------------------------------------
    def append(self, table: str, study: str, rows: list[dict[str, Any]], sweep_id: str,
               types: dict[str, pa.DataType] | None = None) -> Path | None:
        """Write ``rows`` as one new file of ``table`` under ``study``. Atomic; never overwrites."""
        if not rows:
            return None
        rows = [{k: v for k, v in r.items() if k != "study"} for r in rows]
        # Every file of a table has one schema (see layout.py); a key column the rows lack gets its default.
        arrow = layout.to_stable(table, to_arrow(rows, types),
                                 {k: KEY_DEFAULTS[k] for k in KEYS[table] if k in KEY_DEFAULTS})
        directory = inside(self.root, self.table_dir(table, study))
        check_name(sweep_id, "sweep id")
        stamp = now().strftime("%Y%m%dT%H%M%S%f")
        final = directory / f"{sweep_id}-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        fs.write_atomic(final, lambda f: pq.write_table(arrow, f, compression="zstd"))
        return final

    # -- reading ----------------------------------------------------------------------------------
    def partitions(self, table: str) -> list[Path]:
        """The ``study=<name>`` directories of a table, sorted."""
        d = self.table_dir(table)
        return sorted(d / name for name in fs.subdirectories(d) if name.startswith("study="))

    def files(self, table: str, study: str | None = None) -> list[AnyPath]:
        """The files a reader reads now: per partition, files a finished compaction superseded
        (and merged files not yet all in place) left out; merged files first, then by name."""
        if study is not None:
            return partition_files(self.table_dir(table, study))
        return [f for p in self.partitions(table) for f in partition_files(p)]

    def read(self, table: str, study: str | None = None, columns: Iterable[str] | None = None,
             sweep_id: str | None = None) -> pd.DataFrame:
        """One table as a DataFrame (columns unified across files), optionally for one study.

        ``columns`` reads only those columns from the files (and the key, for de-duplication).
        ``sweep_id`` reads only that sweep's rows: files and row groups whose statistics rule it
        out are not read.
        """
        self.table_dir(table)  # an unknown table is a StoreError
        keys = KEYS[table]
        if sweep_id is not None and "sweep_id" not in keys:
            raise StoreError(f"table {table} has no sweep_id")
        want = None if columns is None else layout.stored_columns(
            table, dict.fromkeys(c for c in (*columns, *keys) if c != "study"))
        for attempt in range(_READ_ATTEMPTS):
            files = self.files(table, study)
            if not files:
                return pd.DataFrame(columns=list(keys))
            try:
                tables = [_read_file(f, want, sweep_id) for f in files]
                break
            except FileNotFoundError:  # a compaction replaced it after the listing: list again
                time.sleep(0.01 * attempt)
            except (OSError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
                raise StoreError(f"cannot read {self.table_dir(table)}: {err}") from None
        else:
            raise StoreError(f"cannot read {self.table_dir(table)}: its files kept changing")
        try:
            normal = [layout.normalized(table, t) for t in tables]  # (maps that pandas wrote back as lists)
            arrow = pa.concat_tables(_untyped_nulls(normal), promote_options="permissive")
            arrow = fill_key_defaults(arrow, keys)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
            raise StoreError(f"cannot read {self.table_dir(table)}: {err}") from None
        # Rows of one key are de-duplicated within a partition (the study is part of every key),
        # the first row read wins. A partition that is one compaction's output is unique already.
        key_cols = [k for k in keys if k != "study" and k in arrow.column_names]
        keep: list[np.ndarray] = []
        studies: list[str] = []
        counts: list[int] = []
        start = 0
        for part, group in _by_partition(files, tables):
            n = sum(t.num_rows for t in group)
            index = np.arange(start, start + n)
            if n and not _one_compaction(part):
                first = first_of_each_key(arrow.slice(start, n), key_cols)
                if first is not None:
                    index = first + start
            keep.append(index)
            # The study lives in the partition directory name, as Hive partitioning has it.
            studies.append(part[0].parent.name.split("=", 1)[1])
            counts.append(len(index))
            start += n
        if sum(counts) != arrow.num_rows:
            arrow = arrow.take(pa.array(np.concatenate(keep)))
        df = layout.from_stable(table, arrow).to_pandas()  # knobs and other columns out of their maps
        df.insert(0, "study", np.repeat(np.array(studies, dtype=object), counts))
        if columns is not None:
            df = df[[c for c in columns if c in df.columns]]
        return df

    def sweeps(self, study: str | None = None, sweep_id: str | None = None) -> pd.DataFrame:
        """Sweeps rows, newest first."""
        df = self.read("sweeps", study, sweep_id=sweep_id)
        if "ended_at" in df.columns and len(df):
            df = df.sort_values("ended_at", ascending=False).reset_index(drop=True)
        return df

    def trials(self, study: str | None = None, sweep_id: str | None = None) -> pd.DataFrame:
        return self.read("trials", study, sweep_id=sweep_id)

    def metrics(self, study: str | None = None, sweep_id: str | None = None) -> pd.DataFrame:
        return self.read("metrics", study, sweep_id=sweep_id)

    def existing_keys(self, table: str, study: str, sweep_id: str) -> set[tuple]:
        """Keys of the rows already stored for one sweep (resume uses this to never write twice)."""
        key_cols = [k for k in KEYS[table] if k != "study"]
        for attempt in range(_READ_ATTEMPTS):
            # A sweep's own files start with its id; merged files hold rows of any sweep.
            files = [f for f in self.files(table, study)
                     if f.name.startswith((f"{sweep_id}-", MERGED_PREFIX))]
            keys: set[tuple] = set()
            try:
                for f in files:
                    t = _read_file(f, key_cols)
                    if f.name.startswith(MERGED_PREFIX) and "sweep_id" in t.column_names:
                        t = t.filter(pc.equal(t["sweep_id"], sweep_id))
                    columns = [t.column(c).to_pylist() if c in t.column_names else [KEY_DEFAULTS.get(c)] * t.num_rows
                               for c in key_cols]
                    keys.update(zip(*columns, strict=True))
                return keys
            except FileNotFoundError:
                time.sleep(0.01 * attempt)
        raise StoreError(f"cannot read {self.table_dir(table, study)}: its files kept changing")


# -- partitions, compaction manifests ---------------------------------------------------------------


def merged_group(name: str) -> str | None:
    """The compaction a merged file came from (its name without the part number), else None."""
    return name.rsplit("-", 1)[0] if name.startswith(MERGED_PREFIX) else None


def _read_order(name: str) -> tuple[int, str]:
    # Merged files hold rows written before any file that is still on its own: they come first,
    # so that de-duplication keeps the row written first.
    return (0 if name.startswith(MERGED_PREFIX) else 1, name)


def parquet_names(directory: AnyPath) -> list[str]:
    """Names of the visible Parquet files of a directory (temporary and private names left out)."""
    return sorted(n for n in fs.names(directory) if n.endswith(".parquet") and not n.startswith((".", "_")))


def read_manifest(directory: AnyPath) -> list[dict[str, list[str]]] | None:
    """The compactions being published in a partition (``[{"merged": [...], "superseded": [...]}]``),
    or None when no compaction ever ran there."""
    path = directory / MANIFEST
    try:
        text = _manifest_text(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise StoreError(f"cannot read {path}: {err}") from None
    try:
        entries = json.loads(text)["replacements"]
        return [{"merged": [str(n) for n in e["merged"]], "superseded": [str(n) for n in e["superseded"]]}
                for e in entries]
    except (ValueError, KeyError, TypeError) as err:
        raise StoreError(f"cannot read {path}: not a compaction manifest ({type(err).__name__}: {err})") from None


def _manifest_text(path: AnyPath) -> str:
    """A manifest's text. In object storage a read asks the size, then the bytes: a manifest
    replaced in between reads as a mix of two versions (cut short, or padded with NULs), which
    does not parse: it is read again."""
    if not isinstance(path, ObjectPath):
        return path.read_text()
    for attempt in range(_READ_ATTEMPTS):
        try:
            text = path.read_text()
            json.loads(text)
            return text
        except ValueError:
            time.sleep(0.01 * attempt)
    return path.read_text()  # (not a manifest: the caller says so)


def live_names(names: list[str], manifest: list[dict[str, list[str]]] | None) -> list[str]:
    """Of a partition's file names, those a reader reads: a compaction's merged files replace the
    files they supersede once every merged file is in place; until then they are not read."""
    if not manifest:
        return list(names)
    present = set(names)
    skip: set[str] = set()
    for entry in manifest:
        published = all(n in present for n in entry["merged"])
        skip.update(entry["superseded"] if published else entry["merged"])
    return [n for n in names if n not in skip]


def partition_files(directory: AnyPath) -> list[AnyPath]:
    """The files of one partition a reader reads now, in read order.

    A compactor writes the manifest before its merged files appear and deletes the superseded
    files before it clears the manifest, so a listing read with the manifest that follows it is
    consistent, provided the listing did not change meanwhile (checked by listing again).
    Without a manifest no compaction ever ran there, and one listing is enough.
    """
    for _ in range(_LIST_ATTEMPTS):
        names = parquet_names(directory)
        manifest = read_manifest(directory)
        if manifest is not None and parquet_names(directory) != names:
            continue  # a compaction published meanwhile
        return [directory / n for n in sorted(live_names(names, manifest), key=_read_order)]
    raise StoreError(f"cannot list {directory}: it kept changing")


def _gone_is_missing(read: Any) -> Any:
    """An object deleted (by a compaction) after it was listed, even after it was opened, is
    FileNotFoundError, as a local file that is gone: readers list again. (Object storage reads
    each byte range with a request of its own, which fails once the object is gone.)"""
    def wrapped(path: AnyPath, *args: Any, **kwargs: Any) -> Any:
        try:
            return read(path, *args, **kwargs)
        except FileNotFoundError:
            raise
        except OSError as err:
            text = str(err)
            if isinstance(path, ObjectPath) and ("NO_SUCH_KEY" in text or "NoSuchKey" in text):
                raise FileNotFoundError(str(path)) from None
            raise
    return wrapped


@_gone_is_missing
def _read_file(path: AnyPath, columns: list[str] | None, sweep_id: str | None = None) -> pa.Table:
    with fs.read_parquet_file(path) as f:
        # Arrow's threads cost more than they save on the small files that appends write.
        threads = f.metadata.num_rows >= 100_000
        if columns is None and sweep_id is None:
            return f.read(use_threads=threads)
        present = set(f.schema_arrow.names)
        wanted = None if columns is None else [c for c in columns if c in present]
        if sweep_id is not None:
            return _read_sweep(f, wanted, sweep_id, threads)
        assert columns is not None
        if wanted:
            return f.read(columns=wanted, use_threads=threads)
        # None of the columns: keep the row count (an untyped column of nulls).
        return pa.table({columns[0]: pa.nulls(f.metadata.num_rows)})


def _read_sweep(f: pq.ParquetFile, wanted: list[str] | None, sweep_id: str, threads: bool) -> pa.Table:
    """The rows of one sweep: row groups whose statistics rule the sweep out are not read (an
    append writes one sweep's rows, so most files are skipped on their footer alone)."""
    empty = f.schema_arrow.empty_table()
    empty = empty if wanted is None else empty.select(wanted)
    names = f.metadata.schema.names
    if "sweep_id" not in names:
        return empty
    j = names.index("sweep_id")
    groups = []
    for i in range(f.metadata.num_row_groups):
        stats = f.metadata.row_group(i).column(j).statistics
        if stats is not None and stats.has_min_max and not stats.min <= sweep_id <= stats.max:
            continue
        groups.append(i)
    if not groups:
        return empty
    read_cols = None if wanted is None else list(dict.fromkeys([*wanted, "sweep_id"]))
    table = f.read_row_groups(groups, columns=read_cols, use_threads=threads)
    table = table.filter(pc.equal(table["sweep_id"], sweep_id))
    return table.select(wanted) if wanted is not None else table


def _by_partition(files: list[Path], tables: list[pa.Table]) -> list[tuple[list[Path], list[pa.Table]]]:
    """(files, tables) of each partition, in order (files() lists partitions one after another)."""
    out: list[tuple[list[Path], list[pa.Table]]] = []
    for f, t in zip(files, tables, strict=True):
        if out and out[-1][0][0].parent == f.parent:
            out[-1][0].append(f)
            out[-1][1].append(t)
        else:
            out.append(([f], [t]))
    return out


def _one_compaction(files: list[Path]) -> bool:
    """Whether these files are all the output of one compaction (whose rows are unique by key)."""
    groups = {merged_group(f.name) for f in files}
    return len(groups) == 1 and None not in groups


def fill_key_defaults(arrow: pa.Table, keys: Iterable[str], add_missing: bool = True) -> pa.Table:
    """A key column missing from older files reads as its default (``KEY_DEFAULTS``); missing
    from every file, it is added (``add_missing``)."""
    for col, default in KEY_DEFAULTS.items():
        if col not in keys:
            continue
        if col in arrow.column_names:
            i = arrow.column_names.index(col)
            filled = pc.fill_null(arrow[col], pa.scalar(default).cast(arrow[col].type)) \
                if not pa.types.is_null(arrow[col].type) else pa.array(np.full(arrow.num_rows, default))
            arrow = arrow.set_column(i, col, pc.cast(filled, pa.int64(), safe=False))
        elif add_missing:
            arrow = arrow.append_column(col, pa.array(np.full(arrow.num_rows, default, dtype=np.int64)))
    return arrow


def first_of_each_key(arrow: pa.Table, key_cols: list[str]) -> np.ndarray | None:
    """Sorted indices of the first row of each key, or None when every key is unique already."""
    n = arrow.num_rows
    if not key_cols or n < 2:
        return None
    cols = {}
    for i, c in enumerate(key_cols):
        col = arrow[c]
        cols[f"k{i}"] = col.cast(pa.string()) if pa.types.is_null(col.type) else col
    grouped = pa.table({**cols, "i": pa.array(np.arange(n))}).group_by(list(cols), use_threads=False) \
        .aggregate([("i", "min")])
    if grouped.num_rows == n:
        return None
    return np.sort(grouped["i_min"].to_numpy())


def _untyped_nulls(tables: list[pa.Table]) -> list[pa.Table]:
    """Give a column that holds no value in one file the type the other files hold.

    An all-missing column is written as text (see ``_inferred``); without this, a later file with
    numbers in that column would make the tables impossible to combine.
    """
    typed: dict[str, pa.DataType] = {}
    for t in tables:
        for i, name in enumerate(t.column_names):
            if name not in typed and t.column(i).null_count < t.num_rows:
                typed[name] = t.schema.types[i]
    out = []
    for t in tables:
        for i, (name, have) in enumerate(zip(t.column_names, t.schema.types, strict=True)):
            want = typed.get(name)
            if want is not None and have != want and t.column(i).null_count == t.num_rows:
                t = t.set_column(i, pa.field(name, want), pa.nulls(t.num_rows, type=want))
        out.append(t)
    return out


_fsync_dir = fs.fsync_dir
