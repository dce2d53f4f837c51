"""Store maintenance: compaction (every row kept, idempotent, atomic for orch's readers, repaired
after a crash) and verification (unreadable, temporary and stray files), as functions and as the
``orch store`` command line."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from filelock import FileLock

from orchestrator.errors import StoreError, UserError
from orchestrator.store import maintenance
from orchestrator.store.layout import schema as stable_schema
from orchestrator.store.tables import KEYS, MANIFEST, MERGED_PREFIX, TABLES, Store
from tests.conftest import orch, reading_during_compaction

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def trials(sweep_id: str, first: int, n: int, **extra) -> list[dict]:
    return [{"sweep_id": sweep_id, "trial_id": f"t{i:04d}", "status": "completed", "config.lr": 10.0 ** -(1 + i % 4),
             "config.hidden": 32 * (1 + i % 3), "best_val_loss": 1.0 / (i + 1), "epochs": 3 + i,
             "started_at": T0 + timedelta(minutes=i), **extra} for i in range(first, first + n)]


def batches_of_trials(root: Path, batches: int, size: int) -> Store:
    """A store whose study "a" holds ``batches`` files of ``size`` trials each (sweep s1)."""
    s = Store(root)
    for i in range(batches):
        s.append("trials", "a", trials("s1", size * i, size), "s1")
    return s


def metrics(sweep_id: str, trial_id: str, epochs: range, generation: bool = True) -> list[dict]:
    return [{"sweep_id": sweep_id, "trial_id": trial_id, "epoch": e, "val_loss": 1.0 / e, "lr": 0.01,
             **({"generation": 0} if generation else {})} for e in epochs]


def fill(root: Path) -> Store:
    """A store with what compaction must keep: several files per partition, two studies, a knob
    and a metric added by a later sweep, an int column that later holds a null and a float, rows
    written before the generation key existed, and a row written twice (the first one wins)."""
    s = Store(root)
    s.append("sweeps", "a", [{"sweep_id": "s1", "best_value": 0.5, "ended_at": T0}], "s1")
    s.append("sweeps", "a", [{"sweep_id": "s2", "best_value": 0.25, "ended_at": T0 + timedelta(days=1)}], "s2")
    s.append("trials", "a", trials("s1", 0, 4, score=1), "s1")
    s.append("trials", "a", trials("s1", 4, 3, score=None), "s1")
    s.append("trials", "a", trials("s2", 0, 3, score=2.5, **{"config.new_knob": 0.1, "best_val_r2": 0.9}), "s2")
    s.append("trials", "a", trials("s1", 2, 1, score=7), "s1")  # t0002 of s1 again: the first one wins
    s.append("trials", "b", trials("s9", 0, 2), "s9")
    s.append("trials", "b", trials("s9", 2, 2), "s9")
    s.append("metrics", "a", metrics("s1", "t0000", range(1, 4), generation=False), "s1")
    s.append("metrics", "a", metrics("s1", "t0000", range(3, 6)), "s1")  # epoch 3 again
    s.append("metrics", "a", metrics("s1", "t0001", range(1, 6)), "s1")
    s.append("metrics", "b", metrics("s9", "t0000", range(1, 3)), "s9")
    s.append("exploits", "a", [{"sweep_id": "s1", "trial_id": "t0001", "generation": 1, "donor_trial_id": "t0000"}],
             "s1")
    return s


def read_all(s: Store) -> dict[str, pd.DataFrame]:
    return {t: s.read(t) for t in TABLES}


def raw_rows(s: Store, table: str, study: str | None = None) -> pd.DataFrame:
    """The rows of the files orch's readers would read, without de-duplication."""
    for _ in range(50):
        files = s.files(table, study)
        try:
            parts = [pq.read_table(f).to_pandas().assign(study=f.parent.name[6:]) for f in files]
        except FileNotFoundError:
            continue
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(KEYS[table]))
    raise AssertionError("files kept changing")


def layout(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_ino) for p in root.rglob("*") if p.is_file()}


def parquet_count(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.parquet"))


# -- compaction -------------------------------------------------------------------------------------


def test_compaction_keeps_every_row_and_is_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "store"
    s = fill(root)
    before = read_all(s)
    assert len(before["trials"]) == 14 and len(before["metrics"]) == 12
    assert parquet_count(root) == 13

    report = maintenance.compact(root)
    assert parquet_count(root) == 6  # one file per (table, study) partition
    for t in TABLES:
        pd.testing.assert_frame_equal(s.read(t), before[t], obj=t)  # same rows, same order, same types
    assert "trials: 2 partitions, 6 files -> 2, 14 rows (1 duplicate row dropped)" in report.text()
    assert "metrics: 1 partition, 3 files -> 1, 10 rows (1 duplicate row dropped)" in report.text()
    for f in root.rglob("*.parquet"):
        if f.parent.name == "study=a" and f.parent.parent.name in ("trials", "metrics"):
            assert f.name.startswith(MERGED_PREFIX)
            # The merged file holds each row once, with every column of every sweep.
            t = pq.read_table(f)
            assert t.num_rows == len(before[f.parent.parent.name].query("study == 'a'"))
    merged = pq.read_table(next((root / "trials" / "study=a").glob("*.parquet")))
    assert merged.schema.remove_metadata().equals(stable_schema("trials"))  # the layout of every file
    assert "best_val_r2" in merged.column_names
    assert {k for m in merged["config"].to_pylist() for k, _ in m} == {"lr", "hidden", "new_knob"}
    assert {k for m in merged["extra"].to_pylist() for k, _ in m} == {"score"}
    assert (root / "trials" / "study=a" / MANIFEST).is_file()

    # Again: nothing to do, nothing touched.
    snap = layout(root)
    again = maintenance.compact(root)
    assert "Nothing to compact" in again.text()
    assert layout(root) == snap
    for t in TABLES:
        pd.testing.assert_frame_equal(s.read(t), before[t], obj=t)


def test_evolved_schema_reads_after_compaction_in_every_reader(tmp_path: Path) -> None:
    root = tmp_path / "store"
    s = fill(root)
    maintenance.compact(root)
    s.append("trials", "a", trials("s3", 0, 2, score=3, **{"config.newer": "x"}), "s3")
    df = s.trials("a").set_index(["sweep_id", "trial_id"])
    assert df.loc[("s1", "t0000"), "config.new_knob"] != df.loc[("s1", "t0000"), "config.new_knob"]  # NaN
    assert df.loc[("s2", "t0000"), "config.new_knob"] == 0.1
    assert df.loc[("s3", "t0001"), "config.newer"] == "x" and df.loc[("s1", "t0002"), "score"] == 1.0
    got = duckdb.connect().execute(f"""
        select count(*) as n, count(config['new_knob']) as knob, count(config['newer']) as newer,
               count(extra['score']) as scores, sum(extra['score']::double) as score_sum
        from read_parquet('{root}/trials/study=a/*.parquet')""").df()  # (no union_by_name: one schema)
    assert got.iloc[0].tolist() == [12, 3, 2, 9, 4 * 1 + 3 * 2.5 + 2 * 3]


def test_compaction_splits_into_files_of_max_rows(tmp_path: Path) -> None:
    root = tmp_path / "store"
    s = batches_of_trials(root, 6, 4)
    before = s.trials()
    maintenance.compact(root, max_rows=10)
    names = sorted(p.name for p in (root / "trials" / "study=a").glob("*.parquet"))
    assert [pq.read_metadata(root / "trials" / "study=a" / n).num_rows for n in names] == [10, 10, 4]
    pd.testing.assert_frame_equal(s.trials(), before)
    snap = layout(root)
    maintenance.compact(root, max_rows=10)
    assert layout(root) == snap  # idempotent
    # New rows later: only the part that is not full is merged with them.
    s.append("trials", "a", trials("s2", 0, 3), "s2")
    maintenance.compact(root, max_rows=10)
    after = sorted(p.name for p in (root / "trials" / "study=a").glob("*.parquet"))
    assert after[:2] == names[:2] and len(after) == 3
    assert pq.read_metadata(root / "trials" / "study=a" / after[2]).num_rows == 7
    assert len(s.trials()) == 27


def test_rows_written_after_a_compaction(tmp_path: Path) -> None:
    root = tmp_path / "store"
    s = fill(root)
    maintenance.compact(root, table="trials", study="a")
    assert parquet_count(root / "trials" / "study=a") == 1 and parquet_count(root / "trials" / "study=b") == 2
    # A row written again after the compaction: the first one (in the merged file) still wins.
    s.append("trials", "a", trials("s1", 0, 1, score=99), "s1")
    df = s.trials("a")
    assert df.query("sweep_id == 's1' and trial_id == 't0000'")["score"].tolist() == [1.0]
    # Resume finds a sweep's rows in merged files too.
    assert s.existing_keys("trials", "a", "s2") == {("s2", f"t{i:04d}") for i in range(3)}
    assert s.existing_keys("metrics", "a", "s1") == {("s1", "t0000", 0, e) for e in range(1, 6)} | \
        {("s1", "t0001", 0, e) for e in range(1, 6)}
    maintenance.compact(root, table="metrics")
    assert s.existing_keys("metrics", "a", "s1") == {("s1", "t0000", 0, e) for e in range(1, 6)} | \
        {("s1", "t0001", 0, e) for e in range(1, 6)}
    assert s.existing_keys("metrics", "a", "nope") == set()


def test_a_reader_never_sees_a_row_twice_or_misses_one_during_compactions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A reader reads in every window of every compaction (manifest written but merged file not yet
    # in place, both in place, superseded files deleted and the manifest cleared): each step,
    # once done, waits until the reader thread has read once more. The reader also reads on its
    # own in between, wherever it lands.
    root = tmp_path / "store"
    s = Store(root)
    base = [("a", f"t{i:04d}") for i in range(40)]
    for i in range(0, 40, 4):
        s.append("trials", "a", trials("s1", i, 4), "s1")
    written: list[int] = []  # batches appended so far (a reader must see at least these)
    errors: list[str] = []

    def check() -> None:
        done = len(written)
        raw = raw_rows(s, "trials")
        keys = list(zip(raw["study"], raw["trial_id"], strict=True))
        seen = set(keys)
        if len(keys) != len(seen):
            errors.append(f"duplicated rows: {len(keys)} rows, {len(seen)} keys")
        news = sorted(k[1] for k in seen if k[1].startswith("n"))
        in_order = news == [f"n{j:04d}" for j in range(len(news))]
        if not set(base) <= seen or not in_order or len(news) < done:
            errors.append(f"missing rows: {len(set(base) - seen)} of the first 40, new ones {news}")
        n = len(s.trials())
        if n < 40 + done:
            errors.append(f"Store.read gave {n} rows, expected at least {40 + done}")

    with reading_during_compaction(monkeypatch, ("write_manifest", "publish"), check, lambda: len(written),
                                   errors) as windows:
        for j in range(25):
            row = {"sweep_id": "s1", "trial_id": f"n{j:04d}", "best_val_loss": 0.5}
            s.append("trials", "a", [row], "s1")
            written.append(j)
            maintenance.compact(root)
    assert not errors, errors[:5]
    # Three windows a compaction: the manifest written (publish), the merged file in place, the
    # manifest cleared once the superseded files are gone (settle).
    assert windows == [(j + 1, step) for j in range(25)
                       for step in ("write_manifest", "publish", "write_manifest")]
    assert len(s.trials()) == 65 and parquet_count(root) == 1


def test_interrupted_after_publishing_reads_correctly_and_the_next_compaction_repairs(tmp_path: Path) -> None:
    root = tmp_path / "store"
    s = fill(root)
    before = read_all(s)
    d = root / "trials" / "study=a"
    old = sorted(p.name for p in d.glob("*.parquet"))
    inputs = s.files("trials", "a")
    tmps, finals, rows, dups = maintenance.write_merged("trials", d, inputs)
    assert (rows, dups) == (10, 1)
    # A sweep appends while the compaction runs: its file is not superseded.
    late = s.append("trials", "a", trials("s4", 0, 2), "s4")
    maintenance.publish(d, tmps, finals, [f.name for f in inputs])
    # Crash here: merged file in place, superseded files not yet deleted.
    assert len(list(d.glob("*.parquet"))) == len(old) + 2
    assert [f.name for f in s.files("trials", "a")] == [*finals, late.name]
    assert len(raw_rows(s, "trials", "a")) == 12  # each row once, without de-duplication
    pd.testing.assert_frame_equal(s.read("trials").query("sweep_id != 's4'").reset_index(drop=True), before["trials"])
    # Readers that do not know the manifest see the superseded rows too (see README).
    assert len(pd.read_parquet(d)) == 11 + 10 + 2

    report = orch("store", "verify", "--store", root)
    assert report.returncode == 0, report.stderr
    assert report.stdout.count("superseded: trials/study=a/") == len(old)

    repaired = maintenance.compact(root)
    assert f"trials/study=a: deleted {len(old)} files superseded by an interrupted compaction" in repaired.text()
    assert sorted(p.name for p in d.glob("*.parquet"))[0].startswith(MERGED_PREFIX)
    assert parquet_count(d) == 1  # repaired, then the merged file and the late file merged
    for t in TABLES:
        got = s.read(t)
        if t == "trials":
            got = got.query("sweep_id != 's4'").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, before[t], obj=t)
    assert len(s.trials("a")) == 12


def test_interrupted_before_every_merged_file_is_in_place_is_rolled_back(tmp_path: Path) -> None:
    root = tmp_path / "store"
    s = batches_of_trials(root, 5, 3)
    before = s.trials()
    d = root / "trials" / "study=a"
    inputs = s.files("trials", "a")
    tmps, finals, _, _ = maintenance.write_merged("trials", d, inputs, max_rows=6)
    assert len(finals) == 3
    # Crash after the manifest and the first rename: the merged files are not all there.
    entries = [{"merged": finals, "superseded": [f.name for f in inputs]}]
    maintenance.write_manifest(d, entries)
    tmps[0].rename(d / finals[0])
    assert [f.name for f in s.files("trials", "a")] == [f.name for f in inputs]
    pd.testing.assert_frame_equal(s.trials(), before)
    report = maintenance.compact(root, max_rows=6)
    assert "rolled back an interrupted compaction (1 merged file removed)" in report.text()
    assert not list(d.glob(".*.tmp"))
    pd.testing.assert_frame_equal(s.trials(), before)
    assert parquet_count(d) == 3

    # Crash before the manifest: only hidden temporary files, which the next compaction deletes.
    s.append("trials", "a", trials("s2", 0, 1), "s2")
    maintenance.write_merged("trials", d, s.files("trials", "a"))
    assert len(list(d.glob(".*.tmp"))) == 1
    assert len(s.trials()) == 16
    assert "deleted 1 temporary file of" in maintenance.compact(root).text()
    assert not list(d.glob(".*.tmp")) and len(s.trials()) == 16


def test_compactions_take_turns(tmp_path: Path) -> None:
    root = tmp_path / "store"
    fill(root)
    with FileLock(root / maintenance.LOCK_NAME), pytest.raises(StoreError, match="another compaction is running"):
        maintenance.compact(root)
    maintenance.compact(root)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no results store"):
        maintenance.compact(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no results store"):
        maintenance.verify(tmp_path / "empty")
    root = tmp_path / "store"
    fill(root)
    with pytest.raises(UserError, match=r"--study: no study 'zz' .*studies: a, b"):
        maintenance.compact(root, study="zz")
    with pytest.raises(UserError, match="--table: unknown table 'bogus'"):
        maintenance.compact(root, table="bogus")


# -- verification -----------------------------------------------------------------------------------


def test_verify(tmp_path: Path) -> None:
    root = tmp_path / "store"
    fill(root)
    clean = maintenance.verify(root)
    assert not clean.problems
    assert (clean.tables, len(clean.studies), clean.files, clean.rows) == (4, 2, 13, 2 + 15 + 13 + 1)

    bad = root / "trials" / "study=a" / "s1-20240101T000000000000-deadbeef.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    truncated = next((root / "metrics" / "study=a").glob("*.parquet"))
    truncated.write_bytes(truncated.read_bytes()[:-30])
    (root / "trials" / "study=a" / ".s1-x.parquet.tmp").write_bytes(b"half")
    (root / "trials" / "notes.txt").write_text("mine")
    report = maintenance.verify(root)
    kinds = sorted((p.kind, p.path) for p in report.problems)
    assert kinds == [("outside the layout", "trials/notes.txt"),
                     ("temporary", "trials/study=a/.s1-x.parquet.tmp"),
                     ("unreadable", str(truncated.relative_to(root))),
                     ("unreadable", str(bad.relative_to(root)))]
    assert all("\n" not in p.text() and p.reason for p in report.unreadable)


def test_store_commands(tmp_path: Path) -> None:
    root = tmp_path / "store"
    s = fill(root)
    before = read_all(s)
    p = orch("store", "verify", "--store", root)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"Store {root}: 4 tables, 2 studies, 13 files, 31 rows; no problems."

    p = orch("store", "compact", "--store", root, "--table", "trials")
    assert p.returncode == 0, p.stderr
    assert "trials: 2 partitions, 6 files -> 2, 14 rows (1 duplicate row dropped)" in p.stdout
    p = orch("store", "compact", "--store", root)
    assert p.returncode == 0, p.stderr
    assert "metrics: 1 partition, 3 files -> 1" in p.stdout and "trials:" not in p.stdout
    assert parquet_count(root) == 6
    for t in TABLES:
        pd.testing.assert_frame_equal(s.read(t), before[t], obj=t)
    p = orch("store", "compact", "--store", root)
    assert p.returncode == 0 and "Nothing to compact" in p.stdout

    bad = root / "sweeps" / "study=a" / "s1-20240101T000000000000-deadbeef.parquet"
    bad.write_bytes(b"\x00" * 64)
    p = orch("store", "verify", "--store", root)
    assert p.returncode == 1
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("unreadable: "))
    assert line.startswith(f"unreadable: sweeps/study=a/{bad.name}: ArrowInvalid: ")
    assert p.stdout.splitlines()[-1].endswith("; 1 unreadable.")
    s.append("metrics", "b", metrics("s9", "t0001", range(1, 3)), "s9")
    p = orch("store", "compact", "--store", root)
    assert p.returncode == 1
    assert f"sweeps/study=a: not compacted: cannot read {bad.name}: ArrowInvalid: " in p.stdout
    assert "metrics: 1 partition, 2 files -> 1, 4 rows" in p.stdout  # the other partitions go on
    assert p.stdout.splitlines()[-1].endswith("; 1 not compacted.")

    for args in (("compact", "--store", tmp_path / "nothing"), ("verify", "--store", tmp_path / "nothing"),
                 ("compact", "--store", root, "--study", "zz"), ("compact", "--store", root, "--table", "nope")):
        p = orch("store", *args)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("orch: error: --"), p.stderr
