"""The Parquet results store: layout, atomic appends, crash safety, de-duplication, schema
evolution, and plain Parquet readers (pandas, DuckDB) on the same directory."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.errors import StoreError
from orchestrator.store import layout
from orchestrator.store import tables as store_mod
from orchestrator.store.tables import Store

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def trial_rows(sweep_id: str, n: int, start: int = 0, **extra) -> list[dict]:
    return [{
        "sweep_id": sweep_id,
        "trial_id": f"t{i:04d}",
        "status": "completed" if i % 2 else "stopped_early",
        "config.lr": 10.0 ** -(1 + i % 4),
        "config.hidden": 32 * (1 + i % 3),
        "config.batch_norm": bool(i % 2),
        "best_val_loss": 1.0 / (i + 1),
        "epochs": 3 + i,
        "started_at": T0 + timedelta(minutes=i),
        "ended_at": T0 + timedelta(minutes=i, seconds=30),
        "node": None,
        **extra,
    } for i in range(start, start + n)]


def snapshot(root: Path) -> dict[Path, tuple[bytes, int, int]]:
    """Every file under ``root``: content, mtime and inode."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in root.rglob("*") if p.is_file()}


def duck(sql: str) -> pd.DataFrame:
    con = duckdb.connect()
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def test_round_trip(tmp_path: Path) -> None:
    s = Store(tmp_path / "store")
    rows = trial_rows("s1", 5)
    path = s.append("trials", "study-a", rows, "s1")
    assert path is not None and path.is_file()

    df = s.trials()
    assert len(df) == 5
    assert list(df.columns[:3]) == ["study", "sweep_id", "trial_id"]
    assert set(df["study"]) == {"study-a"}
    assert df["trial_id"].tolist() == [r["trial_id"] for r in rows]
    assert df["config.lr"].tolist() == [r["config.lr"] for r in rows]
    assert df["config.hidden"].tolist() == [r["config.hidden"] for r in rows]
    assert df["config.batch_norm"].tolist() == [r["config.batch_norm"] for r in rows]
    assert df["epochs"].tolist() == [r["epochs"] for r in rows]
    assert df["status"].tolist() == [r["status"] for r in rows]
    assert df["node"].isna().all()
    assert [ts.to_pydatetime() for ts in df["started_at"]] == [r["started_at"] for r in rows]
    assert str(df["started_at"].dt.tz) == "UTC"

    schema = pq.read_schema(path)
    assert schema.remove_metadata().equals(layout.schema("trials"))  # every file of the table: one schema
    assert schema.field("epochs").type == pa.int64()
    assert schema.field("config").type == pa.map_(pa.string(), pa.string())  # the knobs, JSON values
    assert dict(pq.read_table(path)["config"][1].as_py()) == {"lr": "0.01", "hidden": "64", "batch_norm": "true"}
    assert schema.field("started_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("node").type == pa.string()  # declared, though every value is missing
    assert s.append("trials", "study-a", [], "s1") is None  # nothing to write, no file
    assert len(s.files("trials")) == 1


def test_hive_layout(tmp_path: Path) -> None:
    root = tmp_path / "store"
    s = Store(root)
    for table, rows in (("sweeps", [{"sweep_id": "s1", "best_value": 0.5}]),
                        ("trials", trial_rows("s1", 2)),
                        ("metrics", [{"sweep_id": "s1", "trial_id": "t0000", "epoch": 1, "val_loss": 0.9}])):
        path = s.append(table, "study-a", rows, "s1")
        assert path.parent == root / table / "study=study-a"
        assert path.suffix == ".parquet" and path.name.startswith("s1-")
        assert "study" not in pq.read_schema(path).names  # the partition lives in the directory name
    s.append("trials", "study-b", trial_rows("s2", 1), "s2")
    assert sorted(p.relative_to(root).parts[:2] for p in root.rglob("*.parquet")) == [
        ("metrics", "study=study-a"), ("sweeps", "study=study-a"),
        ("trials", "study=study-a"), ("trials", "study=study-b"),
    ]
    assert [p.name for p in root.rglob("*") if p.is_file() and not p.name.endswith(".parquet")] == []
    assert len(s.trials("study-b")) == 1 and set(s.trials()["study"]) == {"study-a", "study-b"}


def test_append_never_rewrites(tmp_path: Path) -> None:
    root = tmp_path / "store"
    s = Store(root)
    s.append("trials", "a", trial_rows("s1", 3), "s1")
    s.append("trials", "a", trial_rows("s1", 3, start=3), "s1")
    before = snapshot(root)
    new = s.append("trials", "a", trial_rows("s1", 3, start=6), "s1")
    after = snapshot(root)
    assert set(after) == set(before) | {new}
    for p, state in before.items():
        assert after[p] == state, f"{p} was rewritten"
    assert len(s.trials()) == 9


def test_dedupe_by_key(tmp_path: Path) -> None:
    s = Store(tmp_path / "store")
    s.append("trials", "a", [{"sweep_id": "s1", "trial_id": "t1", "best_val_loss": 0.1}], "s1")
    s.append("trials", "a", [{"sweep_id": "s1", "trial_id": "t1", "best_val_loss": 0.2},
                             {"sweep_id": "s1", "trial_id": "t2", "best_val_loss": 0.3}], "s1")
    # The same trial id in another sweep or another study is another row.
    s.append("trials", "a", [{"sweep_id": "s2", "trial_id": "t1", "best_val_loss": 0.4}], "s2")
    s.append("trials", "b", [{"sweep_id": "s1", "trial_id": "t1", "best_val_loss": 0.5}], "s1")
    df = s.trials().sort_values(["study", "sweep_id", "trial_id"])
    assert list(zip(df["study"], df["sweep_id"], df["trial_id"], df["best_val_loss"], strict=True)) == [
        ("a", "s1", "t1", 0.1),  # the row written first wins
        ("a", "s1", "t2", 0.3),
        ("a", "s2", "t1", 0.4),
        ("b", "s1", "t1", 0.5),
    ]
    # Metrics are keyed by epoch too.
    s.append("metrics", "a", [{"sweep_id": "s1", "trial_id": "t1", "epoch": e, "val_loss": 1.0 / e} for e in (1, 2)],
             "s1")
    s.append("metrics", "a", [{"sweep_id": "s1", "trial_id": "t1", "epoch": e, "val_loss": 9.0} for e in (2, 3)], "s1")
    m = s.metrics("a").sort_values("epoch")
    assert m["epoch"].tolist() == [1, 2, 3]
    assert m["val_loss"].tolist() == [1.0, 0.5, 9.0]
    # (sweep, trial, generation, epoch): rows written before generations existed are generation 0
    # ... and by generation (population-based training): files written without it read as 0.
    assert s.existing_keys("metrics", "a", "s1") == {("s1", "t1", 0, 1), ("s1", "t1", 0, 2), ("s1", "t1", 0, 3)}
    s.append("metrics", "a", [{"sweep_id": "s1", "trial_id": "t1", "generation": 1, "epoch": 3, "val_loss": 2.0}], "s1")
    m = s.metrics("a").sort_values(["generation", "epoch"])
    assert list(zip(m["generation"], m["epoch"], strict=True)) == [(0, 1), (0, 2), (0, 3), (1, 3)]
    assert ("s1", "t1", 1, 3) in s.existing_keys("metrics", "a", "s1")


def test_schema_evolution(tmp_path: Path) -> None:
    s = Store(tmp_path / "store")
    s.append("trials", "a", [{"sweep_id": "s1", "trial_id": "t1", "best_val_loss": 0.5, "score": 1}], "s1")
    # A later sweep reports a new metric, and a value that is no longer integral.
    s.append("trials", "a", [{"sweep_id": "s2", "trial_id": "t1", "best_val_loss": 0.25,
                              "best_val_r2": 0.9, "score": 1.5}], "s2")
    df = s.trials().sort_values("sweep_id").reset_index(drop=True)
    assert {"best_val_loss", "best_val_r2", "score"} <= set(df.columns)
    assert df["best_val_loss"].tolist() == [0.5, 0.25]
    assert math.isnan(df.loc[0, "best_val_r2"]) and df.loc[1, "best_val_r2"] == 0.9
    assert df["score"].tolist() == [1.0, 1.5]


def test_column_missing_in_every_row_of_an_early_batch(tmp_path: Path) -> None:
    # A first batch where a metric was never reported (written as an untyped, all-missing
    # column), then batches with numbers: the table still reads, as numbers.
    s = Store(tmp_path / "store")
    s.append("trials", "a", [{"sweep_id": "s1", "trial_id": "t1", "best_val_accuracy": None}], "s1")
    s.append("trials", "a", [{"sweep_id": "s1", "trial_id": "t2", "best_val_accuracy": 0.75}], "s1")
    df = s.trials().sort_values("trial_id").reset_index(drop=True)
    assert pd.api.types.is_float_dtype(df["best_val_accuracy"])
    assert math.isnan(df.loc[0, "best_val_accuracy"]) and df.loc[1, "best_val_accuracy"] == 0.75


def test_values_of_different_kinds_in_one_column_read_as_text(tmp_path: Path) -> None:
    # (Their JSON in the extra map: every reader reads them; orch's types them as to_arrow does.)
    s = Store(tmp_path / "store")
    s.append("trials", "a", [{"sweep_id": "s1", "trial_id": "t1", "note": "text"}], "s1")
    s.append("trials", "a", [{"sweep_id": "s1", "trial_id": "t2", "note": 0.5}], "s1")
    assert s.trials()["note"].tolist() == ["text", "0.5"]


def test_empty_store(tmp_path: Path) -> None:
    s = Store(tmp_path / "nothing")
    df = s.trials()
    assert df.empty and list(df.columns) == ["study", "sweep_id", "trial_id"]
    assert s.sweeps().empty
    assert not (tmp_path / "nothing").exists()  # reading creates nothing
    with pytest.raises(StoreError, match="unknown table"):
        s.read("bogus")


def test_sweeps_newest_first(tmp_path: Path) -> None:
    s = Store(tmp_path / "store")
    for i, sid in enumerate(["s-mid", "s-old", "s-new"]):
        ended = T0 + timedelta(days={"s-old": 0, "s-mid": 1, "s-new": 2}[sid])
        s.append("sweeps", "a" if i % 2 else "b", [{"sweep_id": sid, "ended_at": ended}], sid)
    assert s.sweeps()["sweep_id"].tolist() == ["s-new", "s-mid", "s-old"]


# -- crashes --------------------------------------------------------------------------------------

KILLED_WRITER = textwrap.dedent("""
    import sys, time
    import pyarrow.parquet as pq
    from orchestrator.store import tables as store_mod

    def half_then_hang(table, where, **kwargs):
        # The real Parquet writer on the real temporary file: half of the row groups, flushed,
        # then the process is killed before the rest and the footer are written.
        with pq.ParquetWriter(where, table.schema, compression="zstd") as writer:
            writer.write_table(table.slice(0, table.num_rows // 2), row_group_size=1000)
            where.flush()
            print("HALF", flush=True)
            time.sleep(120)
            writer.write_table(table.slice(table.num_rows // 2), row_group_size=1000)

    store_mod.pq.write_table = half_then_hang
    rows = [{"sweep_id": "s2", "trial_id": f"t{i}", "best_val_loss": i / 7} for i in range(20000)]
    store_mod.Store(sys.argv[1]).append("trials", "a", rows, "s2")
    print("DONE", flush=True)
""")


def test_sigkill_mid_write_leaves_store_readable(tmp_path: Path) -> None:
    root = tmp_path / "store"
    s = Store(root)
    s.append("trials", "a", trial_rows("s1", 4), "s1")
    before = snapshot(root)

    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = p.stdout.readline()
        assert line.strip() == "HALF", p.stderr.read() if p.poll() is not None else line
        tmp = [f for f in (root / "trials" / "study=a").iterdir() if f.name.endswith(store_mod.TMP_SUFFIX)]
        assert len(tmp) == 1 and tmp[0].stat().st_size > 0  # half a file is on disk
        os.kill(p.pid, signal.SIGKILL)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)
        p.stdout.close()
        p.stderr.close()
    assert p.returncode == -signal.SIGKILL

    # The half file is still there, under its hidden temporary name, and nothing else changed.
    leftover = tmp[0]
    assert leftover.exists() and leftover.name.startswith(".")
    with pytest.raises(pa.ArrowInvalid):
        pq.read_metadata(leftover)
    after = snapshot(root)
    assert set(after) == set(before) | {leftover}
    assert all(after[f] == before[f] for f in before)
    for f in root.rglob("*.parquet"):
        pq.read_metadata(f)  # every visible .parquet file is whole

    # Every reader ignores the leftover and sees exactly the previous rows.
    df = s.trials()
    assert df["trial_id"].tolist() == [r["trial_id"] for r in trial_rows("s1", 4)]
    assert len(pd.read_parquet(root / "trials")) == 4
    got = duck(f"select count(*) as n from read_parquet('{root}/trials/**/*.parquet', hive_partitioning = true)")
    assert got["n"].tolist() == [4]

    # The store still takes appends.
    s.append("trials", "a", trial_rows("s3", 2), "s3")
    assert len(s.trials()) == 6


def test_error_mid_write_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    s = Store(root)
    s.append("trials", "a", trial_rows("s1", 3), "s1")
    before = snapshot(root)
    real = pq.write_table

    def half_then_fail(table, where, **kwargs):
        real(table.slice(0, table.num_rows // 2), where, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod.pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        s.append("trials", "a", trial_rows("s2", 10), "s2")
    monkeypatch.undo()

    assert snapshot(root) == before  # no new file, no temporary file, nothing rewritten
    assert s.trials()["sweep_id"].tolist() == ["s1"] * 3


# -- other readers --------------------------------------------------------------------------------


@pytest.fixture
def two_studies(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    s = Store(root)
    s.append("trials", "alpha", trial_rows("s1", 3), "s1")
    s.append("trials", "alpha", trial_rows("s1", 2, start=3), "s1")
    s.append("trials", "beta", trial_rows("s2", 4), "s2")
    return root


def test_pandas_reads_the_store(two_studies: Path) -> None:
    ours = Store(two_studies).trials().sort_values(["study", "trial_id"]).reset_index(drop=True)
    theirs = pd.read_parquet(two_studies / "trials")
    theirs["study"] = theirs["study"].astype(str)
    theirs = theirs.sort_values(["study", "trial_id"]).reset_index(drop=True)
    assert len(theirs) == 9
    assert theirs["study"].tolist() == ["alpha"] * 5 + ["beta"] * 4
    for knob in ("lr", "hidden"):  # the knobs: a map of JSON values
        theirs[f"config.{knob}"] = theirs["config"].map(dict).str.get(knob).map(json.loads)
    for col in ("sweep_id", "trial_id", "config.lr", "config.hidden", "best_val_loss", "epochs"):
        assert theirs[col].tolist() == ours[col].tolist(), col


def test_duckdb_reads_the_store(two_studies: Path) -> None:
    got = duck(f"""
        select study, count(*) as n, min(config['lr']::double) as min_lr, max(epochs) as max_epochs
        from read_parquet('{two_studies}/trials/**/*.parquet', hive_partitioning = true)
        group by study order by study
    """)
    assert got["study"].tolist() == ["alpha", "beta"]
    assert got["n"].tolist() == [5, 4]
    assert got["min_lr"].tolist() == [1e-4, 1e-4]
    assert got["max_epochs"].tolist() == [7, 6]


def test_duckdb_reads_evolved_schema_by_name(tmp_path: Path) -> None:
    root = tmp_path / "store"
    s = Store(root)
    s.append("trials", "a", [{"sweep_id": "s1", "trial_id": "t1", "best_val_loss": 0.5}], "s1")
    s.append("trials", "a", [{"sweep_id": "s2", "trial_id": "t1", "best_val_loss": 0.25, "best_val_r2": 0.9}], "s2")
    got = duck(f"""
        select sweep_id, best_val_loss, best_val_r2
        from read_parquet('{root}/trials/**/*.parquet', hive_partitioning = true, union_by_name = true)
        order by sweep_id
    """)
    assert got["best_val_loss"].tolist() == [0.5, 0.25]
    assert math.isnan(got["best_val_r2"][0]) and got["best_val_r2"][1] == 0.9


def test_a_knob_added_later_keeps_old_rows_readable(tmp_path: Path) -> None:
    # The search space of a study gains a knob: old rows have no such column, new rows do. And an
    # integer knob later holds a missing value (a conditional knob) and then a float. The sweep
    # driver declares the config columns' types from the space, as here.
    root = tmp_path / "store"
    s = Store(root)
    hidden = {"config.hidden": pa.int64()}
    s.append("trials", "a", trial_rows("s1", 3), "s1", types=hidden)
    s.append("trials", "a", [{**r, "config.new_knob": 0.5 * i} for i, r in enumerate(trial_rows("s2", 2))], "s2",
             types=hidden)
    s.append("trials", "a", [{**r, "config.hidden": None} for r in trial_rows("s3", 1)], "s3", types=hidden)
    s.append("trials", "a", [{**r, "config.hidden": 48.5, "config.new_knob": 2.0} for r in trial_rows("s4", 1)], "s4",
             types=hidden)
    assert len({pq.read_schema(f) for f in s.files("trials")}) == 1  # one schema for every file

    df = s.trials().set_index(["sweep_id", "trial_id"]).sort_index()
    assert len(df) == 7
    assert df["config.new_knob"].isna().tolist() == [True] * 3 + [False] * 2 + [True, False]
    assert df.loc[("s2", "t0001"), "config.new_knob"] == 0.5
    assert pd.api.types.is_float_dtype(df["config.hidden"])
    assert df["config.hidden"].tolist()[:5] == [32.0, 64.0, 96.0, 32.0, 64.0]
    assert math.isnan(df.loc[("s3", "t0000"), "config.hidden"]) and df.loc[("s4", "t0000"), "config.hidden"] == 48.5
    assert s.read("trials", columns=["trial_id", "config.new_knob"])["config.new_knob"].notna().sum() == 3

    got = duck(f"""
        select sweep_id, trial_id, config['new_knob']::double as knob, config['hidden']::double as hidden
        from read_parquet('{root}/trials/**/*.parquet', hive_partitioning = true)
        order by sweep_id, trial_id
    """)
    assert len(got) == 7 and got["knob"].notna().sum() == 3
    assert got["hidden"].tolist()[:5] == [32.0, 64.0, 96.0, 32.0, 64.0] and got["hidden"].iloc[6] == 48.5

    # pyarrow.dataset takes the first file's schema: it is every file's.
    import pyarrow.dataset as ds

    table = ds.dataset(root / "trials", format="parquet", partitioning="hive").to_table()
    knobs = [dict(m) for m in table.column("config").to_pylist()]
    assert table.num_rows == 7 and sum("new_knob" in k for k in knobs) == 3
    assert sorted(k["hidden"] for k in knobs if "hidden" in k)[:2] == ["32", "32"] and "48.5" in str(knobs)
