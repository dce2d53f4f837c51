"""Store maintenance behind ``orch store compact`` and ``orch store verify``.

Compaction merges the files of each (table, study) partition into one file (or files of at most
``max_rows`` rows), keeping every row: the rows are those :meth:`Store.read` returns, in the same
order, duplicates of a key dropped as the reader drops them. It publishes in steps that a reader of
the store, or a crash, can interrupt anywhere:

1. ``write_merged``: the merged rows go to hidden temporary files (``.compacted-*.parquet.tmp``),
   flushed to disk; readers do not see them.
2. ``publish``: the partition's manifest (``_compacted.json``, replaced atomically) records the
   merged files and the files they supersede; then the merged files are renamed into place. A
   reader reads the merged files only once all of them are there, and from then on skips the
   superseded files (see :func:`orchestrator.store.tables.partition_files`).
3. ``settle``: the superseded files are deleted, then the manifest entry is cleared.

``settle`` also finishes (or rolls back, if its merged files never all appeared) a compaction that
was interrupted, so the next compaction repairs the store before it merges anything. One
compaction runs at a time per store (the lock ``<store>/_store.lock``).

A store in object storage (``s3://bucket/prefix``) has no rename that is atomic (a rename is a
copy and a delete) and no directories. There, step 1 keeps the merged files in memory, and
``publish`` uploads each one under its final name only after the manifest lists it: an upload
appears whole or not at all, and a reader reads the merged files only once all of them are there,
as it does locally. The manifest is one upload (atomic by itself); the lock is an object created
with a conditional write (see :func:`orchestrator.store.fs.lock`); a store is a prefix that
holds any of the tables.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from orchestrator.errors import StoreError, UserError
from orchestrator.store import fs, layout
from orchestrator.store.fs import AnyPath, ObjectPath
from orchestrator.store.tables import (
    KEYS,
    MANIFEST,
    MERGED_PREFIX,
    TABLES,
    TMP_SUFFIX,
    Store,
    _fsync_dir,
    _read_file,
    _untyped_nulls,
    fill_key_defaults,
    first_of_each_key,
    live_names,
    merged_group,
    now,
    parquet_names,
    partition_files,
    read_manifest,
)

LOCK_NAME = "_store.lock"
DEFAULT_MAX_ROWS = 1_000_000
_MANIFEST_TMP = f".{MANIFEST}{TMP_SUFFIX}"


def check_root(root: str | os.PathLike[str] | ObjectPath) -> AnyPath:
    """The store directory (or object storage prefix), or a one-line user error when there is none
    at ``root``."""
    where = fs.as_path(root)
    if isinstance(where, ObjectPath):
        return _check_remote_root(where)
    if not where.is_dir():
        raise UserError(f"--store: no results store at {where}" + (" (not a directory)" if where.exists() else ""))
    if not any((where / t).is_dir() for t in TABLES):
        raise UserError(f"--store: {where} holds no results store (none of {', '.join(t + '/' for t in TABLES)})")
    return where


def _check_remote_root(root: ObjectPath) -> ObjectPath:
    """A prefix is a store when it holds any of the tables (object storage has no directories)."""
    try:
        if set(TABLES) & set(fs.subdirectories(root)):
            return root
        entries = fs.names(root)
    except StoreError as err:  # unreachable endpoint, refused credentials...
        raise UserError(f"--store: {err}") from None
    if entries:
        raise UserError(f"--store: {root} holds no results store (none of {', '.join(t + '/' for t in TABLES)})")
    raise UserError(f"--store: no results store at {root}{missing_reason(root)}")


def missing_reason(root: ObjectPath) -> str:
    """Why nothing is under ``root``, when it can tell: `` (no bucket 'x')``, `` (an object, not a
    prefix)``; else ``""``. (A listing of a missing bucket is empty, as for an empty prefix.)"""
    with contextlib.suppress(StoreError, OSError):
        bucket = root.parents[-1] if root.key else root
        if not bucket.exists():
            return f" (no bucket {root.bucket!r})"
        if root.key and root.is_file():
            return " (an object, not a prefix)"
    return ""


@contextmanager
def store_lock(root: AnyPath, wait: bool, echo: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold the store's maintenance lock. Yields False when the lock file cannot be created (a
    read-only store: nothing can compact it either)."""
    if isinstance(root, ObjectPath):
        with _object_store_lock(root, wait, echo) as held:
            yield held
        return
    lock = FileLock(root / LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise StoreError(f"another compaction is running on {root} (lock {root / LOCK_NAME})") from None
        if echo:
            echo(f"waiting for the compaction running on {root} to finish")
        lock.acquire()
    except OSError as err:
        if not wait:
            raise StoreError(f"cannot lock {root}: {one_line(err)}") from None
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@contextmanager
def _object_store_lock(root: ObjectPath, wait: bool, echo: Callable[[str], None] | None) -> Iterator[bool]:
    """:func:`store_lock` in object storage: a lock object created by a conditional write; one
    whose holder died is taken over once stale (:func:`orchestrator.store.fs.lock`)."""
    path = root / LOCK_NAME
    with contextlib.ExitStack() as stack:
        try:
            got = _try_enter(stack, fs.lock(path, timeout=0))
        except StoreError:
            if not wait:
                raise
            got = None  # credentials that may read but not write: nothing can compact it either
        if got is False:
            if not wait:
                raise StoreError(f"another compaction is running on {root} (lock {path})")
            if echo:
                echo(f"waiting for the compaction running on {root} to finish")
            stack.enter_context(fs.lock(path, timeout=-1))
        yield got is not None


def _try_enter(stack: contextlib.ExitStack, lock: contextlib.AbstractContextManager[None]) -> bool:
    try:
        stack.enter_context(lock)
    except fs.LockTimeout:
        return False
    return True


# -- compaction -------------------------------------------------------------------------------------


@dataclass
class PartitionResult:
    table: str
    study: str
    files_before: int
    files_after: int
    rows: int
    duplicates: int = 0
    repaired: str = ""  # what settle() did about an interrupted compaction, if anything
    error: str = ""  # why this partition was left as it was

    @property
    def merged(self) -> bool:
        return self.files_after < self.files_before


@dataclass
class CompactionSummary:
    partitions: list[PartitionResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def errors(self) -> list[PartitionResult]:
        return [p for p in self.partitions if p.error]

    def text(self) -> str:
        lines = [f"{p.table}/study={p.study}: {p.repaired}" for p in self.partitions if p.repaired]
        lines += [f"{p.table}/study={p.study}: not compacted: {p.error}" for p in self.errors]
        merged = [p for p in self.partitions if p.merged]
        for table in TABLES:
            mine = [p for p in merged if p.table == table]
            if mine:
                dups = sum(p.duplicates for p in mine)
                lines.append(f"{table}: {plural(len(mine), 'partition')}, "
                             f"{plural(sum(p.files_before for p in mine), 'file')} -> "
                             f"{sum(p.files_after for p in mine):,}, {plural(sum(p.rows for p in mine), 'row')}"
                             + (f" ({plural(dups, 'duplicate row')} dropped)" if dups else ""))
        if merged or self.errors:
            lines.append(f"Compacted {len(merged)} of {plural(len(self.partitions), 'partition')}: "
                         f"{plural(sum(p.files_before for p in merged), 'file')} -> "
                         f"{sum(p.files_after for p in merged):,} "
                         f"in {self.seconds:.1f}s" + (f"; {len(self.errors)} not compacted." if self.errors else "."))
        else:
            lines.append(f"Nothing to compact: {plural(len(self.partitions), 'partition')}, each one file already.")
        return "\n".join(lines) + "\n"


def compact(root: str | os.PathLike[str] | ObjectPath, study: str | None = None, table: str | None = None,
            max_rows: int = DEFAULT_MAX_ROWS) -> CompactionSummary:
    """Merge the files of every partition (of ``table``, of ``study``, or all)."""
    root = check_root(root)
    if table is not None and table not in TABLES:
        raise UserError(f"--table: unknown table {table!r}; valid: {', '.join(TABLES)}")
    if max_rows < 1:
        raise UserError(f"--max-rows: must be at least 1 (got {max_rows})")
    store = Store(root)
    tables = [table] if table else list(TABLES)
    partitions = [(t, d) for t in tables for d in store.partitions(t)]
    if study is not None:
        known = sorted({d.name.split("=", 1)[1] for _, d in partitions})
        partitions = [(t, d) for t, d in partitions if d.name == f"study={study}"]
        if not partitions:
            raise UserError(f"--study: no study {study!r} in {root}"
                            + (f" ({table})" if table else "") + f"; studies: {', '.join(known) or '(none)'}")
    t0 = time.perf_counter()
    report = CompactionSummary()
    with store_lock(root, wait=False):
        for t, d in partitions:
            try:
                report.partitions.append(compact_partition(t, d, max_rows))
            except (StoreError, OSError, pa.ArrowException) as err:
                # A file that cannot be read keeps its partition as it is; the others go on.
                reason = str(err) if isinstance(err, StoreError) else one_line(err)
                report.partitions.append(PartitionResult(t, d.name.split("=", 1)[1], 0, 0, 0, error=reason))
    report.seconds = time.perf_counter() - t0
    return report


def compact_partition(table: str, directory: AnyPath, max_rows: int = DEFAULT_MAX_ROWS) -> PartitionResult:
    """Compact one partition (the caller holds the store lock)."""
    repaired = settle(directory)
    files = partition_files(directory)
    study = directory.name.split("=", 1)[1]
    inputs = inputs_of(files, max_rows)
    if len(inputs) < 2:
        rows = sum(num_rows(f) for f in files)
        return PartitionResult(table, study, len(files), len(files), rows, repaired=repaired)
    tmps, finals, rows, dups = write_merged(table, directory, inputs, max_rows)
    publish(directory, tmps, finals, [f.name for f in inputs])
    settle(directory)
    return PartitionResult(table, study, len(files), len(files) - len(inputs) + len(finals), rows, dups,
                           repaired=repaired)


def inputs_of(files: list[AnyPath], max_rows: int) -> list[AnyPath]:
    """The files to merge: all but merged files that are full already."""
    return [f for f in files
            if merged_group(f.name) is None or num_rows(f) < max_rows]


def num_rows(path: AnyPath) -> int:
    """The rows of a Parquet file, from its footer."""
    if isinstance(path, ObjectPath):
        with fs.read_parquet_file(path) as f:
            return int(f.metadata.num_rows)
    return pq.read_metadata(path).num_rows


# A merged file not yet published: a hidden temporary file beside its final place (local), or its
# bytes (object storage, where a rename is a copy: they are uploaded under the final name).
Pending = Union[Path, bytes]  # noqa: UP007 - a runtime alias


def write_merged(table: str, directory: AnyPath, inputs: list[AnyPath],
                 max_rows: int = DEFAULT_MAX_ROWS) -> tuple[list[Pending], list[str], int, int]:
    """Step 1: the rows of ``inputs`` (in read order, the first row of each key) written to hidden
    temporary files of at most ``max_rows`` rows (in object storage: kept in memory). Returns
    (temporary paths or contents, final names, rows, duplicate rows dropped)."""
    tables = []
    for path in inputs:
        try:
            # (A file some other program wrote back, its maps as lists, combines with the others.)
            tables.append(layout.normalized(table, _read_file(path, None)))
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"cannot read {path.name}: {one_line(err)}") from None
    try:
        arrow = pa.concat_tables(_untyped_nulls(tables), promote_options="permissive")
    except pa.ArrowException as err:
        raise StoreError(f"cannot combine its files: {one_line(err)}") from None
    arrow = fill_key_defaults(arrow, KEYS[table], add_missing=False)
    first = first_of_each_key(arrow, [k for k in KEYS[table] if k != "study" and k in arrow.column_names])
    total = arrow.num_rows
    if first is not None:
        arrow = arrow.take(pa.array(first))
    name = f"{MERGED_PREFIX}{now().strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
    parts = max(1, math.ceil(arrow.num_rows / max_rows))
    if isinstance(directory, ObjectPath):
        finals = [f"{name}-{i:04d}.parquet" for i in range(parts)]
        return ([_parquet_bytes(arrow.slice(i * max_rows, max_rows)) for i in range(parts)], finals,
                arrow.num_rows, total - arrow.num_rows)
    tmps: list[Pending] = []
    finals = []
    try:
        for i in range(parts):
            final = f"{name}-{i:04d}.parquet"
            tmp = directory / f".{final}{TMP_SUFFIX}"
            tmps.append(tmp)
            finals.append(final)
            with open(tmp, "wb") as f:
                pq.write_table(arrow.slice(i * max_rows, max_rows), f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        for tmp in tmps:
            if isinstance(tmp, Path):
                tmp.unlink(missing_ok=True)
        raise
    return tmps, finals, arrow.num_rows, total - arrow.num_rows


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def publish(directory: AnyPath, tmps: list[Pending], finals: list[str], superseded: list[str]) -> None:
    """Step 2: record the compaction in the manifest, then rename the merged files into place (in
    object storage: upload them under their final names, one after the other)."""
    entries = read_manifest(directory) or []
    write_manifest(directory, [*entries, {"merged": finals, "superseded": superseded}])
    if isinstance(directory, ObjectPath):
        try:
            for data, final in zip(tmps, finals, strict=True):
                put_merged(directory / final, data)  # type: ignore[arg-type]
        except BaseException:
            # Readers never read an incomplete set of merged files: roll back now if the store
            # answers (else the next compaction does).
            with contextlib.suppress(Exception):
                settle(directory)
            raise
        return
    for tmp, final in zip(tmps, finals, strict=True):
        os.replace(tmp, directory / final)
    _fsync_dir(directory)


def put_merged(path: ObjectPath, data: bytes) -> None:
    """Upload one merged file under its final name: one request, visible whole or not at all."""
    path.write_bytes(data)


def settle(directory: AnyPath) -> str:
    """Step 3, and the repair of an interrupted compaction: for each compaction in the manifest,
    delete the files it superseded if its merged files are all in place, else delete its merged
    files (readers never read them); then clear the manifest, and delete the temporary files of
    compactions that never reached the manifest. Returns what it repaired ("" when nothing)."""
    entries = read_manifest(directory)
    done: list[str] = []
    if entries:
        present = set(parquet_names(directory))
        for entry in entries:
            if all(n in present for n in entry["merged"]):
                gone = [n for n in entry["superseded"] if n in present]
                for n in gone:
                    (directory / n).unlink(missing_ok=True)
                if gone:
                    done.append(f"deleted {plural(len(gone), 'file')} superseded by an interrupted compaction")
            else:
                back = [n for n in entry["merged"] if n in present]
                for n in entry["merged"]:
                    (directory / n).unlink(missing_ok=True)
                    (directory / f".{n}{TMP_SUFFIX}").unlink(missing_ok=True)
                done.append(f"rolled back an interrupted compaction ({plural(len(back), 'merged file')} removed)")
        if not isinstance(directory, ObjectPath):
            _fsync_dir(directory)
        write_manifest(directory, [])
    leftovers = [p for p in directory.glob(f".{MERGED_PREFIX}*{TMP_SUFFIX}")]
    for p in leftovers:
        p.unlink(missing_ok=True)
    if leftovers:
        done.append(f"deleted {plural(len(leftovers), 'temporary file')} of an interrupted compaction")
    if not isinstance(directory, ObjectPath):  # (object storage: a manifest is one upload, no temporary)
        (directory / _MANIFEST_TMP).unlink(missing_ok=True)
    return "; ".join(done)


def write_manifest(directory: AnyPath, entries: list[dict[str, list[str]]]) -> None:
    """Replace the partition's manifest atomically (written under a temporary name, renamed; in
    object storage, one upload)."""
    if isinstance(directory, ObjectPath):
        text = json.dumps({"version": 1, "replacements": entries}, indent=1)
        fs.write_bytes_atomic(directory / MANIFEST, text.encode())
        return
    tmp = directory / _MANIFEST_TMP
    with open(tmp, "w") as f:
        json.dump({"version": 1, "replacements": entries}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)
    _fsync_dir(directory)


# -- verification -----------------------------------------------------------------------------------


@dataclass
class Problem:
    kind: str  # "unreadable", "temporary", "outside the layout", "superseded"
    path: str  # relative to the store
    reason: str = ""

    def text(self) -> str:
        return f"{self.kind}: {self.path}" + (f": {self.reason}" if self.reason else "")


@dataclass
class VerifyReport:
    root: AnyPath
    tables: int = 0
    studies: set[str] = field(default_factory=set)
    files: int = 0
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def unreadable(self) -> list[Problem]:
        return [p for p in self.problems if p.kind == "unreadable"]

    def text(self) -> str:
        lines = [p.text() for p in self.problems]
        counts = {k: sum(p.kind == k for p in self.problems)
                  for k in ("unreadable", "temporary", "outside the layout", "superseded")}
        tail = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no problems"
        lines.append(f"Store {self.root}: {plural(self.tables, 'table')}, "
                     f"{plural(len(self.studies), 'study', 'studies')}, "
                     f"{plural(self.files, 'file')}, {plural(self.rows, 'row')}; {tail}.")
        return "\n".join(lines) + "\n"


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else words or word + 's'}"


def one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:300]


def verify(root: str | os.PathLike[str] | ObjectPath, echo: Callable[[str], None] | None = None) -> VerifyReport:
    """Read every Parquet file of the store (footer and data); list what is wrong."""
    return _verify(check_root(root), echo)


def _verify(root: AnyPath, echo: Callable[[str], None] | None) -> VerifyReport:
    report = VerifyReport(root)
    with store_lock(root, wait=True, echo=echo):
        top = {name: (is_dir, is_file) for name, is_dir, is_file in _entries(root)} \
            if isinstance(root, ObjectPath) else None
        for table in TABLES:
            tdir = root / table
            if not (tdir.exists() if top is None else table in top):
                continue
            rel = tdir.relative_to(root)
            if not (tdir.is_dir() if top is None else top[table][0]):
                report.problems.append(Problem("outside the layout", str(rel), "not a directory"))
                continue
            report.tables += 1
            for name, is_dir, is_file in _entries(tdir):
                entry = tdir / name
                if is_dir and entry.name.startswith("study="):
                    _verify_partition(root, entry, report)
                else:
                    _other(root, entry, report, is_file)
    return report


def _entries(directory: AnyPath) -> list[tuple[str, bool, bool]]:
    """(name, is a directory, is a file) of each entry of ``directory``, sorted by name. In object
    storage from two listings, not a request per entry; a name is a "directory" when keys lie
    under it (it may be an object too)."""
    if isinstance(directory, ObjectPath):
        dirs = set(fs.subdirectories(directory))
        return [(n, n in dirs, n not in dirs) for n in sorted(set(fs.names(directory)))]
    return [(e.name, e.is_dir(), e.is_file()) for e in sorted(directory.iterdir())]


def _verify_partition(root: AnyPath, directory: AnyPath, report: VerifyReport) -> None:
    report.studies.add(directory.name.split("=", 1)[1])
    manifest = None
    try:
        manifest = read_manifest(directory)
    except StoreError as err:
        report.problems.append(Problem("unreadable", str((directory / MANIFEST).relative_to(root)),
                                       str(err).rsplit(": ", 1)[-1]))
    names = parquet_names(directory)
    live = set(live_names(names, manifest))
    for name, _, is_file in _entries(directory):
        entry = directory / name
        rel = str(entry.relative_to(root))
        if entry.name in names and is_file:
            report.files += 1
            try:
                with fs.read_parquet_file(entry) as f:
                    rows = f.metadata.num_rows
                    f.read()  # every page, decompressed and decoded
            except Exception as err:  # noqa: BLE001 - any failure to read is the finding
                report.problems.append(Problem("unreadable", rel, one_line(err)))
                continue
            if entry.name in live:
                report.rows += rows
            else:
                report.problems.append(Problem("superseded", rel, "left by an interrupted compaction; "
                                                                  "orch store compact deletes it"))
        elif entry.name == MANIFEST and is_file:
            continue
        else:
            _other(root, entry, report, is_file)


def _other(root: AnyPath, entry: AnyPath, report: VerifyReport, is_file: bool) -> None:
    rel = str(entry.relative_to(root))
    if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX) and is_file:
        report.problems.append(Problem("temporary", rel, "a write in progress, or left by a crash"))
    else:
        report.problems.append(Problem("outside the layout", rel))
