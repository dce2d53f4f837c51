"""The store's stable layout: every file of a table has the same schema, so that any Parquet reader
(pandas, pyarrow.dataset, Polars, DuckDB without union_by_name) sees every column of every study,
locally and in object storage; orch's own reader returns what it always did; ``orch store migrate``
rewrites a store of the previous layout with nothing lost.

The stores are written the way sweeps write them: trials and metrics rows by the sweep driver's
own store writer (``StoreWriter``, fed results shaped as the trainer reports them, no Ray run), a
sweeps row shaped as the driver's. A store "of the previous layout" is written by the same code
with the layout step left out: ``to_arrow``'s table as it is, as the previous version wrote it.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from orchestrator.errors import StoreError
from orchestrator.store import fs, layout, maintenance
from orchestrator.store import migrate as migration
from orchestrator.store.tables import KEYS, TABLES, Store, to_arrow
from orchestrator.train.metrics import DIAGNOSTICS, METRIC_DIRECTIONS, TASK_METRICS
from tests.conftest import assert_user_error, cli, orch

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
# Two studies of different tasks, with knobs of their own: what plain readers used to miss.
CLF = {"lr": 1e-3, "hidden": 64, "optimizer": "adam", "batch_norm": True, "layers": [64, 64], "label_smoothing": 0.1}
REG = {"lr": 3e-4, "hidden": 128, "loss": "huber", "huber_delta": 1.0}
TYPES = {"config.lr": pa.float64(), "config.hidden": pa.int64()}  # as the driver declares them


# -- writing a store as sweeps do ---------------------------------------------------------------------


class Trial:
    """What the store writer reads of a Tune trial, and the results of orch's trainer for it."""

    def __init__(self, trial_id: str, config: dict[str, Any], task: str, seed: float) -> None:
        self.trial_id, self.config, self.task, self.seed = trial_id, config, task, seed
        self.status = "RUNNING"
        self.last_result: dict[str, Any] = {}
        self.error_msg = self.error_file = None
        self.num_failures = 0

    def result(self, epochs: int) -> dict[str, Any]:
        """``epochs`` epochs as one final result, with the metrics of its task (and one of its own)."""
        names = [*TASK_METRICS[self.task], *DIAGNOSTICS[self.task]]
        history = [{**{m: self.seed + i / 10 + 1 / e for i, m in enumerate(names)}, "val_collapsed": 0.0,
                    "grad_norm": 2.0 / e, "lr": self.config["lr"], "batch_size": 32, "generation": 0,
                    "epoch_time_s": 0.25, "epoch": e, "timestamp": 1.8e9 + e} for e in range(1, epochs + 1)]
        last = history[-1]
        test = {f"test_{m[len('val_'):]}": last[m] + 0.01 for m in names if m.startswith("val_")}
        self.last_result = {
            **{k: v for k, v in last.items() if k != "epoch_time_s"}, "history": history,
            "best": {m: min(h[m] for h in history) for m in TASK_METRICS[self.task]}, "best_epoch": epochs,
            "final": True, "trial_status": "completed", "stop_reason": "", "train_time_s": 0.25 * epochs,
            "collapsed": False, "n_params": 1000 + int(self.seed * 100), "node_id": "node-1", "hostname": "host-1",
            "device": "cpu", "gpu_ids": "", "test": {**test, "test_custom": self.seed},
        }
        return self.last_result


def write_sweep(root: Path | str, study: str, sweep_id: str, task: str, configs: list[dict[str, Any]],
                base: dict[str, Any] | None = None) -> None:
    """One sweep's trials and metrics (by the driver's store writer) and its sweeps row."""
    from orchestrator.tune.callbacks import StoreWriter

    knobs = sorted({k for c in configs for k in c})
    writer = StoreWriter(str(root), study, sweep_id, base or {"seed": 0}, TYPES, knobs)
    writer.setup()
    trials = [Trial(f"{sweep_id[-4:]}_{i:03d}", c, task, i / 8) for i, c in enumerate(configs)]
    for t in trials:
        writer.on_trial_start(iteration=0, trials=trials, trial=t)
        writer.on_trial_result(iteration=0, trials=trials, trial=t, result=t.result(3))
        t.status = "TERMINATED"
        writer.on_trial_complete(iteration=0, trials=trials, trial=t)
    writer.on_experiment_end(trials=trials)
    metric = "val_accuracy" if task == "classification" else "val_rmse"
    Store(root).append("sweeps", study, [{
        "sweep_id": sweep_id, "reason": "manual", "parent_sweep_id": None, "scheduler": "asha", "searcher": "random",
        "config_yaml": f"study: {study}\n", "config_sig": "ab" * 16, "config_path": "conf/x.yaml",
        "started_at": T0, "ended_at": T0 + timedelta(minutes=5), "num_trials": len(configs),
        "best_trial_id": trials[0].trial_id, "metric": metric, "mode": "max" if task == "classification" else "min",
        "best_value": 0.5, "promoted": True, "data_fingerprint": "f" * 16, "code_version": "c" * 12,
        "search_space": json.dumps({"lr": [1e-4, 1e-2]}), "stages": None, "orch_version": "0.1.0"}], sweep_id)


def varied(base: dict[str, Any], n: int, **changes: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        c = {**base, "lr": base["lr"] * (i + 1), "hidden": base["hidden"] + 16 * i, **changes}
        out.append({k: v for k, v in c.items() if v is not None})
    return out


def write_two_tasks(root: Path | str) -> None:
    """A classification study (two sweeps, the second with a knob more) and a regression study."""
    write_sweep(root, "clf", "20260105-090000-aaaa", "classification", varied(CLF, 3))
    write_sweep(root, "clf", "20260105-100000-bbbb", "classification", varied(CLF, 2, weight_decay=0.01))
    write_sweep(root, "reg", "20260105-110000-cccc", "regression", varied(REG, 3))


def previous_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Appends from now on write ``to_arrow``'s table as it is: the previous version's files."""
    monkeypatch.setattr(layout, "to_stable", lambda table, arrow, defaults=None: arrow)


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layout") / "store"
    write_two_tasks(root)
    return root


@pytest.fixture(scope="module")
def two_tasks_before(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same store, written in the previous layout."""
    root = tmp_path_factory.mktemp("layout-old") / "store"
    with pytest.MonkeyPatch.context() as mp:
        previous_layout(mp)
        write_two_tasks(root)
    return root


def canonical(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows by key, columns by name, columns without any value left out (a map holds values)."""
    df = df[[c for c in df.columns if df[c].notna().any()]]
    return df.sort_values(keys).reset_index(drop=True)[sorted(df.columns)]


def read_all(root: Path | str) -> dict[str, pd.DataFrame]:
    """Every table as orch reads it (see canonical)."""
    s = Store(root)
    return {t: canonical(s.read(t), list(KEYS[t])) for t in TABLES if s.files(t)}


def pairs(cell: Any) -> list[tuple[str, str]]:
    """A map cell as a reader hands it over: (key, value) pairs, or {"key", "value"} records."""
    return [(e["key"], e["value"]) if isinstance(e, dict) else tuple(e) for e in cell]


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


# -- the layout -----------------------------------------------------------------------------------------


def test_the_fixed_columns_cover_every_metric_the_trainer_reports() -> None:
    trials, metrics = layout.FIELDS["trials"], layout.FIELDS["metrics"]
    for task, names in TASK_METRICS.items():
        for m in names:
            assert {f"final_{m}", f"best_{m}"} <= set(trials), (task, m)
            assert m in metrics and metrics[m][0] == pa.float64(), (task, m)
        for m in (*names, *DIAGNOSTICS[task]):
            assert m in metrics, (task, m)
            if m.startswith("val_"):
                assert f"test_{m[len('val_'):]}" in trials, (task, m)
    for m in METRIC_DIRECTIONS:  # every metric that gets final_ and best_ columns
        assert trials[f"final_{m}"] == trials[f"best_{m}"] == (pa.float64(), True)
    # The store writer's own columns of a metrics row, with its declared types.
    from orchestrator.tune.callbacks import METRIC_ROW, METRIC_TYPES

    for name in METRIC_ROW:
        assert name in metrics and not metrics[name][1], name
    for name, typ in METRIC_TYPES.items():
        assert metrics[name][0] == typ, name


def test_values_round_trip_with_their_types() -> None:
    rows = [{"sweep_id": "s", "trial_id": "t1", "config.hidden": 64, "config.opt": "adam", "config.lr": 1e-3,
             "config.one": 1.0, "config.bn": True, "config.layers": json.dumps([64, 64]), "config.note": 'say "hi"\n',
             "config.odd": "[not json", "config.word": "ünïcode", "config.cond": None, "config.nan": math.nan,
             "best_val_loss": 0.5, "epochs": 3, "my_score": 7, "my_text": "x", "mixed": "text"},
            {"sweep_id": "s", "trial_id": "t2", "config.hidden": 128, "config.opt": "sgd", "config.lr": math.inf,
             "config.one": 2.0, "config.bn": False, "config.layers": json.dumps({"a": [1]}), "config.cond": 0.5,
             "config.nan": -math.inf, "best_val_loss": None, "epochs": 3.5, "mixed": 0.5}]
    written = layout.to_stable("trials", to_arrow(rows))
    assert written.schema.equals(layout.schema("trials"))
    assert dict(written["config"][0].as_py()) == {
        "hidden": "64", "opt": '"adam"', "lr": "0.001", "one": "1.0", "bn": "true", "layers": "[64, 64]",
        "note": '"say \\"hi\\"\\n"', "odd": '"[not json"', "word": '"ünïcode"', "nan": "NaN"}  # no "cond": null
    many = layout.to_stable("trials", to_arrow(rows * 40))  # (arrow's vectorised path, not json's)
    assert many["config"].to_pylist()[:2] == written["config"].to_pylist()
    pd.testing.assert_frame_equal(layout.from_stable("trials", many).slice(0, 2).to_pandas(),
                                  layout.from_stable("trials", written).to_pandas())
    back = layout.from_stable("trials", written).to_pylist()
    for row, got in zip(rows, back, strict=True):
        for k, v in row.items():
            if isinstance(v, float) and math.isnan(v):
                assert math.isnan(got[k]), k
            elif k not in ("mixed", "epochs"):
                assert got[k] == v and type(got[k]) is type(v), (k, got[k], v)
    # A column that does not fit its fixed type (3.5 epochs) is kept in extra and reads back, as a
    # float as before (to_arrow types it so).
    assert written["epochs"].null_count == 2 and ("epochs", "3.5") in written["extra"][1].as_py()
    assert [r["epochs"] for r in back] == [3.0, 3.5]
    # Values of different kinds in one column read as text, as to_arrow types them.
    assert [r["mixed"] for r in back] == ["text", "0.5"]
    types = layout.from_stable("trials", written).schema
    assert [types.field(c).type for c in ("config.hidden", "config.lr", "config.bn", "epochs")] == \
        [pa.int64(), pa.float64(), pa.bool_(), pa.float64()]


def test_a_file_written_back_by_pandas_still_reads(tmp_path: Path) -> None:
    # pandas reads a map as (key, value) pairs and writes them back as lists: orch reads that file,
    # beside stable ones too, and migrate puts it back in the layout, merged with the others.
    root = tmp_path / "store"
    s = Store(root)
    path = s.append("trials", "a", [{"sweep_id": "s1", "trial_id": "t1", "config.lr": 0.1, "config.opt": "adam",
                                     "mine": 3}], "s1")
    frame = pd.read_parquet(path)
    frame["status"] = "completed"
    frame.to_parquet(path, index=False)
    assert not layout.is_stable("trials", pq.read_schema(path))
    s.append("trials", "a", [{"sweep_id": "s2", "trial_id": "t1", "config.lr": 0.2, "mine": 4}], "s2")
    def got() -> list[list[Any]]:
        df = s.trials()[["config.lr", "config.opt", "mine", "status"]].astype(object)
        return df.where(df.notna(), None).values.tolist()

    want = [[0.1, "adam", 3, "completed"], [0.2, None, 4, None]]
    assert got() == want
    assert [(p.old, p.files_before, p.files_after) for p in migration.migrate(root).migrated] == [(1, 2, 1)]
    assert all(layout.is_stable("trials", pq.read_schema(f)) for f in s.files("trials"))
    assert got() == want


def test_migrate_reads_together_what_did_not_combine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A column of text in one sweep's file and of numbers in another's: the previous layout could
    # not read them together (nor compact them); each file is migrated on its own, then they read.
    root = tmp_path / "store"
    with monkeypatch.context() as mp:
        previous_layout(mp)
        s = Store(root)
        s.append("trials", "a", [{"sweep_id": "s1", "trial_id": "t1", "note": "text", "config.x": "a"}], "s1")
        s.append("trials", "a", [{"sweep_id": "s2", "trial_id": "t1", "note": 0.5, "config.x": 2}], "s2")
    with pytest.raises(StoreError, match="cannot read"):
        s.trials()
    report = migration.migrate(root)
    assert report.text().splitlines()[0] == "trials/study=a: 2 files in the previous layout; 2 files -> 2, 2 rows"
    assert s.trials()[["note", "config.x"]].values.tolist() == [["text", "a"], ["0.5", "2"]]


def test_every_file_of_a_table_has_the_same_schema(two_tasks: Path) -> None:
    files = parquet_files(two_tasks)
    assert {f.parent.parent.name for f in files} == {"sweeps", "trials", "metrics"} and len(files) == 9
    for f in files:
        assert pq.read_schema(f).remove_metadata().equals(layout.schema(f.parent.parent.name)), f


def test_orchs_reader_returns_what_it_did(two_tasks: Path, two_tasks_before: Path) -> None:
    now, before = read_all(two_tasks), read_all(two_tasks_before)
    assert set(now) == set(before) == {"sweeps", "trials", "metrics"}
    clock = ["started_at", "ended_at"]  # (when the store writer wrote the trials: not the same twice)
    assert (now["trials"][clock].dtypes == before["trials"][clock].dtypes).all()
    now["trials"], before["trials"] = now["trials"].drop(columns=clock), before["trials"].drop(columns=clock)
    for t in now:
        pd.testing.assert_frame_equal(now[t], before[t], obj=t)
    trials = Store(two_tasks).trials().set_index("trial_id")
    clf = trials.loc["aaaa_000"]
    assert (clf["config.hidden"], clf["config.optimizer"], clf["config.lr"], clf["config.batch_norm"]) == \
        (64, "adam", 1e-3, True)
    assert clf["config.layers"] == "[64, 64]" and pd.isna(clf["config.huber_delta"])
    assert trials.loc["cccc_002", "config.huber_delta"] == 1.0 and trials.loc["cccc_002", "config.loss"] == "huber"
    assert trials["config.weight_decay"].notna().sum() == 2
    # Knobs in their order, right after the trial's header columns, as the store writer wrote them.
    cols = list(trials.columns)
    assert cols[:6] == ["study", "sweep_id", "status", "stop_reason", "stage", "generation"]
    assert cols[6].startswith("config.")
    # Metrics of a task no study has (none here) are left out; custom ones are there.
    assert "test_custom" in cols and "grad_norm" in Store(two_tasks).metrics().columns
    assert Store(two_tasks).read("trials", columns=["trial_id", "config.huber_delta", "test_custom", "test_rmse"]) \
        .notna().sum().tolist() == [8, 3, 8, 3]


def check_plain_readers(trials: pa.Table | pd.DataFrame, who: str) -> None:
    """What every reader must see of the two studies: both tasks' metrics, every knob."""
    df = trials.to_pandas() if isinstance(trials, pa.Table) else trials
    df = df.assign(study=df["study"].astype(str)).set_index("study")
    assert len(df) == 8, who
    for col, study in (("test_rmse", "reg"), ("best_val_rmse", "reg"), ("test_accuracy", "clf"),
                       ("best_val_accuracy", "clf"), ("test_auc", "clf"), ("test_r2", "reg")):
        assert df[col].notna().groupby(level=0).sum().to_dict() == {study: df.index.tolist().count(study),
                                                                    ({"clf", "reg"} - {study}).pop(): 0}, (who, col)
    knobs = [{k: json.loads(v) for k, v in pairs(m)} for m in df["config"]]
    assert sum("huber_delta" in k for k in knobs) == 3 and sum("label_smoothing" in k for k in knobs) == 5, who
    assert sum("weight_decay" in k for k in knobs) == 2, who
    assert {k["optimizer"] for k in knobs if "optimizer" in k} == {"adam"} and {k["hidden"] for k in knobs} >= {64, 128}
    assert {type(k["layers"]) for k in knobs if "layers" in k} == {list}, who


DUCK_QUERY = """
    select study, count(*) as n, count(test_rmse) as rmse, count(test_accuracy) as accuracy,
           count(config['huber_delta']) as huber, count(config['label_smoothing']) as smoothing,
           max(config['hidden']::int) as hidden, min(config['lr']::double) as lr,
           string_agg(distinct json_extract_string(config['optimizer'], '$'), ',') as optimizer,
           count(extra['test_custom']) as custom
    from {source} group by study order by study
"""
DUCK_EXPECTED = [["clf", 5, 0, 5, 0, 5, 96, 1e-3, "adam", 5], ["reg", 3, 3, 0, 3, 0, 160, 3e-4, None, 3]]


def test_plain_readers_see_every_column(two_tasks: Path) -> None:
    import polars as pl

    check_plain_readers(pd.read_parquet(two_tasks / "trials"), "pandas")
    check_plain_readers(ds.dataset(two_tasks / "trials", format="parquet", partitioning="hive").to_table(),
                        "pyarrow.dataset")
    check_plain_readers(pl.read_parquet(f"{two_tasks}/trials/**/*.parquet", hive_partitioning=True)
                        .with_columns(pl.col("config").map.entries()).to_pandas(), "polars")
    got = pl.read_parquet(f"{two_tasks}/trials/**/*.parquet", hive_partitioning=True).group_by("study").agg(
        pl.col("config").map.get("huber_delta").cast(pl.Float64).count()).sort("study")
    assert got.rows() == [("clf", 0), ("reg", 3)]
    source = f"read_parquet('{two_tasks}/trials/**/*.parquet', hive_partitioning = true)"  # no union_by_name
    assert duckdb.sql(DUCK_QUERY.format(source=source)).fetchall() == [tuple(r) for r in DUCK_EXPECTED]
    metrics = duckdb.sql(f"""select count(val_rmse), count(val_accuracy), count(extra['grad_norm'])
        from read_parquet('{two_tasks}/metrics/**/*.parquet', hive_partitioning = true)""").fetchall()
    assert metrics == [(9, 15, 24)]


def test_plain_readers_see_every_column_in_object_storage(s3_store: str) -> None:
    import polars as pl
    import pyarrow.fs as pafs

    write_two_tasks(s3_store)
    root = fs.as_path(s3_store)
    keys = [f.name for f in Store(root).files("trials")]
    assert len(keys) == 3
    filesystem, path = pafs.FileSystem.from_uri(s3_store)
    check_plain_readers(pd.read_parquet(f"{path}/trials", filesystem=filesystem), "pandas (s3)")
    dataset = ds.dataset(f"{path}/trials", filesystem=filesystem, format="parquet", partitioning="hive")
    check_plain_readers(dataset.to_table(), "pyarrow.dataset (s3)")
    import os

    options = {"aws_endpoint_url": os.environ["AWS_ENDPOINT_URL"], "aws_access_key_id": "testing",
               "aws_secret_access_key": "testing", "aws_region": "us-east-1", "aws_allow_http": "true"}
    frame = pl.read_parquet(f"{s3_store}/trials/**/*.parquet", hive_partitioning=True, storage_options=options)
    check_plain_readers(frame.with_columns(pl.col("config").map.entries()).to_pandas(), "polars (s3)")
    # DuckDB reads S3 with its httpfs extension (not installed here, no network): it scans the
    # same files through pyarrow's filesystem instead, by the same SQL.
    assert duckdb.sql(DUCK_QUERY.format(source="dataset")).fetchall() == [tuple(r) for r in DUCK_EXPECTED]


def test_a_compacted_store_stays_stable_and_reads_the_same(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write_two_tasks(root)
    before = read_all(root)
    maintenance.compact(root)
    assert len(parquet_files(root)) == 6
    for f in parquet_files(root):
        assert layout.is_stable(f.parent.parent.name, pq.read_schema(f)), f
    for t, df in read_all(root).items():
        pd.testing.assert_frame_equal(df, before[t], obj=t)
    assert "Nothing to migrate" in migration.migrate(root).text()


# -- orch store migrate ---------------------------------------------------------------------------------


def old_store(root: Path | str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store of the previous layout: several sweeps with different knobs and tasks, an exploit,
    a sweep written in two batches, a row written twice (the first one wins)."""
    with monkeypatch.context() as mp:
        previous_layout(mp)
        write_two_tasks(root)
        write_sweep(root, "reg", "20260106-090000-dddd", "regression", varied(REG, 2, loss="mse", huber_delta=None),
                    base={"seed": 1, "epochs_budget": 9})
        s = Store(root)
        s.append("exploits", "clf", [{"sweep_id": "20260105-090000-aaaa", "trial_id": "aaaa_001", "generation": 1,
                                      "epoch": 2, "donor_trial_id": "aaaa_000", "donor_epoch": 2,
                                      "old_config": "{}", "new_config": "{}", "changed": "{}", "timestamp": T0}],
                 "20260105-090000-aaaa")
        s.append("trials", "reg", [{"sweep_id": "20260106-090000-dddd", "trial_id": "dddd_000", "status": "error",
                                    "config.lr": 1.0}], "20260106-090000-dddd")


def test_migrate_rewrites_a_store_of_the_previous_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    old_store(root, monkeypatch)
    before = read_all(root)
    assert sum(not layout.is_stable(f.parent.parent.name, pq.read_schema(f)) for f in parquet_files(root)) == 14
    # The user's report: a plain reader takes one file's schema and misses the other study's columns.
    plain = pd.read_parquet(root / "trials")
    assert "test_rmse" not in plain.columns or "test_accuracy" not in plain.columns

    snapshot = {f: f.read_bytes() for f in parquet_files(root)}
    run = cli("store", "migrate", "--store", root, "--dry-run")
    assert run.code == 0, run.stderr
    assert "trials/study=reg: would rewrite 3 files in the previous layout (3 files, 6 rows)" in run.stdout
    assert run.stdout.splitlines()[-1] == ("Would migrate 7 of 7 partitions (14 files in the previous layout); "
                                           "--dry-run: nothing changed.")
    assert {f: f.read_bytes() for f in parquet_files(root)} == snapshot

    p = orch("store", "migrate", "--store", root)
    assert p.returncode == 0, p.stderr
    assert "trials/study=reg: 3 files in the previous layout; 3 files -> 1, 5 rows (1 duplicate row dropped)" \
        in p.stdout, p.stdout
    assert p.stdout.splitlines()[-1].startswith("Migrated 7 of 7 partitions to the stable layout: 14 files -> 7 in ")
    for f in parquet_files(root):
        assert layout.is_stable(f.parent.parent.name, pq.read_schema(f)), f
    after = read_all(root)
    assert set(after) == set(before) == {"sweeps", "trials", "metrics", "exploits"}
    for t in after:
        pd.testing.assert_frame_equal(after[t], before[t], obj=t)  # every row and value
    check_plain_readers(pd.read_parquet(root / "trials").query("sweep_id != '20260106-090000-dddd'"), "pandas")
    knobs = duckdb.sql(f"""select count(config['epochs_budget']), count(config['loss']), count(config['huber_delta'])
        from read_parquet('{root}/trials/**/*.parquet', hive_partitioning = true)""").fetchall()
    assert knobs == [(2, 5, 3)]

    # Again: nothing to do, nothing touched.
    snapshot = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in root.rglob("*") if f.is_file()}
    run = cli("store", "migrate", "--store", root)
    assert run.code == 0
    assert run.stdout == "Nothing to migrate: 7 partitions, every file in the stable layout already.\n"
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in root.rglob("*") if f.is_file()} == snapshot
    run = cli("store", "verify", "--store", root)
    assert run.code == 0 and run.stdout.strip().endswith("; no problems."), run.stdout


def test_migrate_a_store_that_was_upgraded_halfway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Files of both layouts in one partition (a store written on by the new version before it was
    # migrated): read together, and migrated together.
    root = tmp_path / "store"
    with monkeypatch.context() as mp:
        previous_layout(mp)
        write_sweep(root, "clf", "20260105-090000-aaaa", "classification", varied(CLF, 2))
    write_sweep(root, "clf", "20260105-100000-bbbb", "classification", varied(CLF, 2, weight_decay=0.01))
    write_sweep(root, "reg", "20260105-110000-cccc", "regression", varied(REG, 2))
    trials = Store(root).trials()
    assert len(trials) == 6 and trials["config.weight_decay"].notna().sum() == 2
    assert trials["config.layers"].tolist()[:4] == ["[64, 64]"] * 4
    before = read_all(root)
    report = migration.migrate(root)
    assert [(p.name, p.old, p.files_before, p.files_after) for p in report.migrated] == [
        ("sweeps/study=clf", 1, 2, 1), ("trials/study=clf", 1, 2, 1), ("metrics/study=clf", 1, 2, 1)]
    for t, df in read_all(root).items():
        pd.testing.assert_frame_equal(df, before[t], obj=t)


def test_migrate_keeps_a_partition_it_cannot_rewrite_exactly(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root).append("trials", "ok", [{"sweep_id": "s1", "trial_id": "t1", "best_val_loss": 0.5}], "s1")
    d = root / "trials" / "study=odd"
    d.mkdir(parents=True)
    # A time in a column that is not a fixed one: a JSON value would read back as text.
    pq.write_table(to_arrow([{"sweep_id": "s1", "trial_id": "t1", "my_time": T0}]), d / "s1-x.parquet")
    before = d.joinpath("s1-x.parquet").read_bytes()
    report = migration.migrate(root)
    assert [p.name for p in report.errors] == ["trials/study=odd"]
    assert "values of column 'my_time'" in report.errors[0].error
    assert report.text().splitlines()[-1].endswith("; 1 not migrated.")
    assert [p.name for p in d.iterdir()] == ["s1-x.parquet"] and d.joinpath("s1-x.parquet").read_bytes() == before
    assert Store(root).trials("odd")["my_time"].tolist() == [pd.Timestamp(T0)]


def test_migrate_in_object_storage(s3_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root = fs.as_path(s3_store)
    old_store(root, monkeypatch)
    before = read_all(root)
    report = migration.migrate(root)
    assert len(report.migrated) == 7 and not report.errors, report.text()
    for t, df in read_all(root).items():
        pd.testing.assert_frame_equal(df, before[t], obj=t)
    for t in TABLES:
        for f in Store(root).files(t):
            with fs.read_parquet_file(f) as pf:
                assert layout.is_stable(t, pf.schema_arrow), f
    assert "Nothing to migrate" in migration.migrate(root).text()


def test_migrate_bad_input(tmp_path: Path) -> None:
    assert_user_error(cli("store", "migrate", "--store", tmp_path / "nothing"), "--store: no results store at")
    (tmp_path / "empty").mkdir()
    assert_user_error(cli("store", "migrate", "--store", tmp_path / "empty", "--dry-run"), "holds no results store")
    root = tmp_path / "store"
    Store(root).append("trials", "a", [{"sweep_id": "s1", "trial_id": "t1"}], "s1")
    with maintenance.store_lock(root, wait=False):
        run = cli("store", "migrate", "--store", root)
    assert run.code == 1 and "another compaction is running" in run.stderr


def test_a_file_of_empty_maps_written_back_by_pandas_still_reads_and_compacts(tmp_path: Path) -> None:
    # A sweeps row has no knobs and no extra columns: its maps are empty, and pandas writes them
    # back as lists of nulls, a type of their own.
    root = tmp_path / "store"
    s = Store(root)
    path = s.append("sweeps", "a", [{"sweep_id": "s1", "status": "completed"}], "s1")
    frame = pd.read_parquet(path)
    frame["status"] = "edited"
    frame.to_parquet(path, index=False)
    assert pa.types.is_list(pq.read_schema(path).field("extra").type)
    s.append("sweeps", "a", [{"sweep_id": "s2", "status": "completed", "mine": 1}], "s2")
    assert sorted(s.sweeps()["status"]) == ["completed", "edited"]
    maintenance.compact(root)
    assert sorted(s.sweeps()["status"]) == ["completed", "edited"] and len(s.files("sweeps")) == 1
