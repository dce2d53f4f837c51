"""``orch store migrate``: rewrite the files of an older orch into the stable layout.

An older orch wrote each file with the columns of its own rows (one per knob and metric), so plain
Parquet readers, which take one file's schema for a directory, missed the columns of other studies
(see :mod:`orchestrator.store.layout`). orch reads those files as they are; other readers need them
rewritten. A partition (table, study) that holds any such file is migrated as a compaction is, by
the compaction's own steps (:mod:`orchestrator.store.maintenance`), so orch's readers never see a
row twice or miss one, and a crash leaves the store readable (the next ``orch store compact`` or
``migrate`` finishes or rolls back what was interrupted):

1. ``write_merged``: every file the partition's readers read, merged (in read order, the first row
   of each key), as hidden temporary files (files that do not combine, which only the stable
   layout reads together, each on its own); then each is rewritten in the stable layout, and the
   rows of the stable files are checked against the merged rows (the same rows, in the same order,
   with the same values) before anything is published;
2. ``publish``: the manifest names the new files and the files they supersede, the new files go
   into place;
3. ``settle``: the superseded files are deleted.

It holds the store's maintenance lock. A partition whose files are all stable already is left
alone, so a second run does nothing.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator.errors import StoreError
from orchestrator.store import fs, layout, maintenance
from orchestrator.store.fs import AnyPath, ObjectPath
from orchestrator.store.maintenance import DEFAULT_MAX_ROWS, one_line, plural
from orchestrator.store.tables import (
    KEY_DEFAULTS,
    KEYS,
    MERGED_PREFIX,
    TABLES,
    TMP_SUFFIX,
    Store,
    fill_key_defaults,
    partition_files,
)


@dataclass
class PartitionMigration:
    table: str
    study: str
    old: int  # files in the previous layout
    files_before: int
    files_after: int
    rows: int
    duplicates: int = 0
    repaired: str = ""
    error: str = ""

    @property
    def name(self) -> str:
        return f"{self.table}/study={self.study}"


@dataclass
class MigrationSummary:
    root: AnyPath
    dry_run: bool = False
    partitions: list[PartitionMigration] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def errors(self) -> list[PartitionMigration]:
        return [p for p in self.partitions if p.error]

    @property
    def migrated(self) -> list[PartitionMigration]:
        return [p for p in self.partitions if p.old and not p.error]

    def text(self) -> str:
        lines = [f"{p.name}: {p.repaired}" for p in self.partitions if p.repaired]
        lines += [f"{p.name}: not migrated: {p.error}" for p in self.errors]
        todo = self.migrated
        for p in todo:
            old = plural(p.old, "file") + " in the previous layout"
            if self.dry_run:
                lines.append(f"{p.name}: would rewrite {old} ({plural(p.files_before, 'file')}, "
                             f"{plural(p.rows, 'row')})")
            else:
                lines.append(f"{p.name}: {old}; {plural(p.files_before, 'file')} -> {p.files_after:,}, "
                             f"{plural(p.rows, 'row')}"
                             + (f" ({plural(p.duplicates, 'duplicate row')} dropped)" if p.duplicates else ""))
        n = plural(len(self.partitions), "partition")
        if not todo and not self.errors:
            lines.append(f"Nothing to migrate: {n}, every file in the stable layout already.")
        elif self.dry_run:
            lines.append(f"Would migrate {len(todo)} of {n} ({plural(sum(p.old for p in todo), 'file')} "
                         f"in the previous layout); --dry-run: nothing changed.")
        else:
            lines.append(f"Migrated {len(todo)} of {n} to the stable layout: "
                         f"{plural(sum(p.files_before for p in todo), 'file')} -> "
                         f"{sum(p.files_after for p in todo):,} in {self.seconds:.1f}s"
                         + (f"; {len(self.errors)} not migrated." if self.errors else "."))
        return "\n".join(lines) + "\n"


def migrate(root: str | os.PathLike[str] | ObjectPath, dry_run: bool = False,
            max_rows: int = DEFAULT_MAX_ROWS) -> MigrationSummary:
    """Rewrite every partition that holds a file of the previous layout (``dry_run``: only say which)."""
    root = maintenance.check_root(root)
    store = Store(root)
    partitions = [(t, d) for t in TABLES for d in store.partitions(t)]
    report = MigrationSummary(root, dry_run)
    t0 = time.perf_counter()
    if dry_run:
        for t, d in partitions:
            report.partitions.append(_guarded(t, d, lambda t=t, d=d: _survey(t, d)))
        return report
    with maintenance.store_lock(root, wait=False):
        for t, d in partitions:
            report.partitions.append(_guarded(t, d, lambda t=t, d=d: migrate_partition(t, d, max_rows)))
    report.seconds = time.perf_counter() - t0
    return report


def _guarded(table: str, directory: AnyPath, step: Any) -> PartitionMigration:
    try:
        return step()
    except (StoreError, OSError, pa.ArrowException) as err:
        # A partition that cannot be read or rewritten stays as it is; the others go on.
        reason = str(err) if isinstance(err, StoreError) else one_line(err)
        return PartitionMigration(table, _study(directory), 0, 0, 0, 0, error=reason)


def _study(directory: AnyPath) -> str:
    return directory.name.split("=", 1)[1]


def old_files(table: str, files: Sequence[AnyPath]) -> list[AnyPath]:
    """The files not in the stable layout (read from their footers)."""
    out = []
    for f in files:
        try:
            with fs.read_parquet_file(f) as pf:
                if not layout.is_stable(table, pf.schema_arrow):
                    out.append(f)
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"cannot read {f.name}: {one_line(err)}") from None
    return out


def _files(directory: AnyPath) -> list[AnyPath]:
    """The files readers read in the partition, in read order."""
    return list(partition_files(cast(Path, directory)))  # (a local directory or a prefix: see fs.py)


def _survey(table: str, directory: AnyPath) -> PartitionMigration:
    files = _files(directory)
    old = old_files(table, files)
    rows = sum(maintenance.num_rows(f) for f in files) if old else 0
    return PartitionMigration(table, _study(directory), len(old), len(files), len(files), rows)


def migrate_partition(table: str, directory: AnyPath, max_rows: int = DEFAULT_MAX_ROWS) -> PartitionMigration:
    """Migrate one partition (the caller holds the store lock); nothing to do when every file is stable.

    Every file readers read (the stable ones and full merged ones too) becomes one set of stable
    files, as a compaction merges them. Files that cannot be combined (a column whose values are
    of different kinds from file to file, which only the stable layout reads together; maps that
    pandas wrote back as lists beside stable files) are each rewritten on their own instead, the
    stable files left as they are. Either way one publication replaces them all.
    """
    repaired = maintenance.settle(directory)
    _remove_leftovers(directory)
    files = _files(directory)
    study = _study(directory)
    old = old_files(table, files)
    if not old:
        return PartitionMigration(table, study, 0, len(files), len(files), 0, repaired=repaired)
    written: list[tuple[list[Any], list[str], int, int]] = []  # write_merged's (pending, finals, rows, dups)
    try:
        try:
            written.append(maintenance.write_merged(table, directory, files, max_rows))
            superseded = files
        except StoreError:
            superseded = old  # (a file that cannot be read fails again here: the partition is reported)
            for f in old:
                written.append(maintenance.write_merged(table, directory, [f], max_rows))
        defaults = {k: KEY_DEFAULTS[k] for k in KEYS[table] if k in KEY_DEFAULTS}
        pending: list[Any] = []
        for group, _, _, _ in written:
            merged = [_read_pending(p) for p in group]
            stable = [layout.to_stable(table, layout.from_stable(table, t), defaults) for t in merged]
            check_same(table, merged, stable)
            pending += [_rewrite_pending(p, t) for p, t in zip(group, stable, strict=True)]
    except BaseException:
        for p in (p for group, _, _, _ in written for p in group):
            if not isinstance(p, bytes):
                p.unlink(missing_ok=True)
        raise
    finals = [name for _, names, _, _ in written for name in names]
    maintenance.publish(directory, pending, finals, [f.name for f in superseded])
    maintenance.settle(directory)
    return PartitionMigration(table, study, len(old), len(files), len(files) - len(superseded) + len(finals),
                              sum(w[2] for w in written), sum(w[3] for w in written), repaired=repaired)


def _read_pending(pending: Path | bytes) -> pa.Table:
    if isinstance(pending, bytes):
        return pq.read_table(pa.BufferReader(pending))
    with fs.read_parquet_file(pending) as f:
        return f.read()


def _rewrite_pending(pending: Path | bytes, table: pa.Table) -> Path | bytes:
    """A merged file not yet published, written again (in the stable layout)."""
    if isinstance(pending, bytes):
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return buffer.getvalue()
    fs.write_atomic(pending, lambda f: pq.write_table(table, f, compression="zstd"))
    return pending


def _remove_leftovers(directory: AnyPath) -> None:
    """The temporary files of a rewrite killed halfway (``..compacted-*.tmp``: see
    :func:`_rewrite_pending` and :func:`orchestrator.store.fs.write_atomic`)."""
    for name in fs.names(directory):
        if name.startswith(f"..{MERGED_PREFIX}") and name.endswith(TMP_SUFFIX):
            (directory / name).unlink(missing_ok=True)


# -- the check ----------------------------------------------------------------------------------------


def check_same(table: str, merged: list[pa.Table], stable: list[pa.Table]) -> None:
    """Raise a StoreError unless the stable files read back (as :meth:`Store.read` reads them) as
    the merged rows do: the same rows in the same order, the same columns, the same values.

    Two things the stable layout does not keep are allowed: a column with no value in any row (a
    map keeps values, not names), and a fixed column's declared type (a best_val_loss of 1 reads as
    1.0). Any other difference (a time in a column that is not a fixed one would read back as
    text) keeps the partition as it is.
    """
    def read_back(tables: list[pa.Table]) -> pa.Table:
        arrow = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        arrow = layout.from_stable(table, fill_key_defaults(arrow, KEYS[table]))
        return arrow.select([c for c in arrow.column_names if arrow[c].null_count < arrow.num_rows])

    want, got = read_back(merged), read_back(stable)
    if want.num_rows != got.num_rows:
        raise StoreError(f"the stable layout would hold {got.num_rows:,} rows, not {want.num_rows:,}; left as it is")
    missing = [c for c in want.column_names if c not in got.column_names]
    added = [c for c in got.column_names if c not in want.column_names]
    if missing or added:
        raise StoreError(f"the stable layout would change the columns (missing: {', '.join(missing) or '-'}; "
                         f"added: {', '.join(added) or '-'}); left as it is")
    for c in want.column_names:
        if not same_values(want[c], got[c]):
            raise StoreError(f"the stable layout would change the values of column {c!r} "
                             f"({want[c].type} -> {got[c].type}); left as it is")


def same_values(a: pa.ChunkedArray | pa.Array, b: pa.ChunkedArray | pa.Array) -> bool:
    """Whether two columns hold the same values row by row (null = null, NaN = NaN; an integer
    equals the same float)."""
    if len(a) != len(b):
        return False
    numeric = (pa.types.is_integer(a.type) or pa.types.is_floating(a.type)) and \
        (pa.types.is_integer(b.type) or pa.types.is_floating(b.type))
    if a.type != b.type and not numeric:
        return _same_python(a.to_pylist(), b.to_pylist())
    if a.type != b.type:
        if any(pa.types.is_integer(t) and not _exact_float(x) for t, x in ((a.type, a), (b.type, b))):
            return _same_python(a.to_pylist(), b.to_pylist())
        a, b = a.cast(pa.float64()), b.cast(pa.float64())
    try:
        equal = pc.fill_null(pc.equal(a, b), False)
    except pa.ArrowNotImplementedError:
        return _same_python(a.to_pylist(), b.to_pylist())
    ok = pc.or_(equal, pc.and_(pc.is_null(a), pc.is_null(b)))
    if pa.types.is_floating(a.type):
        ok = pc.or_(ok, pc.fill_null(pc.and_(pc.is_nan(a), pc.is_nan(b)), False))
    return bool(pc.all(ok).as_py() in (True, None))


def _exact_float(column: pa.ChunkedArray | pa.Array) -> bool:
    bound = 2 ** 53
    low, high = pc.min_max(column).values()
    return low.as_py() is None or (-bound <= low.as_py() and high.as_py() <= bound)


def _same_python(a: list[Any], b: list[Any]) -> bool:
    def same(x: Any, y: Any) -> bool:
        if x is None or y is None:
            return x is None and y is None
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        if isinstance(x, bool) or isinstance(y, bool) or not isinstance(x, (int, float)) \
                or not isinstance(y, (int, float)):
            return type(x) is type(y) and bool(x == y)
        return bool(x == y)

    return all(same(x, y) for x, y in zip(a, b, strict=True))
