"""A results store in object storage (``s3://bucket/prefix``): ``orch results``, ``orch best``,
``orch report``, ``orch store compact`` and ``verify`` (with their lock), ``orch retune`` (with its
lock, its crontab line and its service), and their one-line errors, against a real S3 API: moto's
server on 127.0.0.1 (tests/conftest.py: ``s3_server``, ``s3_store``).

The store is written by hand through ``Store.append`` (sweeps, trials, metrics of two studies, as
a sweep writes them); the same rows written to a local store give the same answers. Each command
runs at least once as a user runs it, as a process of its own, in an empty working directory that
it must leave empty (nothing of an ``s3://`` store is written to the local disk); the other cases
run in this process through the same click entry point (``cli``), which is faster. The objects
are checked in the bucket itself (``S3.keys``).

Slow (``-m slow``): the report, the ``--every`` service, and a re-tune that runs its sweep (Ray).
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
import yaml

from orchestrator.store import fs, maintenance
from orchestrator.store.tables import KEYS, MANIFEST, MERGED_PREFIX, TABLES, Store, _read_file
from tests.conftest import (
    CONFIG,
    ROOT,
    S3,
    S3_BUCKET,
    assert_user_error,
    cli,
    free_port,
    orch,
    orch_process,
    reading_during_compaction,
)

STUDY = "tabular-digits"
OTHER = "other-study"
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)
# sweep id -> (ended_at offset in days, best trial, best value); the best sweep is the oldest.
SWEEPS = {"s-old": (0, "t2", 0.11), "s-mid": (1, "t0", 0.30), "s-new": (2, "t1", 0.20)}
NEWEST_FIRST = ["s-new", "o-1", "s-mid", "s-old"]


# -- the store ------------------------------------------------------------------------------------


def trials_for(sweep_id: str, best_trial: str, best_value: float) -> list[dict]:
    rows = []
    for j in range(3):
        tid, is_best = f"t{j}", f"t{j}" == best_trial
        rows.append({
            "sweep_id": sweep_id, "trial_id": tid, "status": "completed" if is_best else "stopped_early",
            "config.lr": 0.001 * (j + 1) + (0.0001 if sweep_id == "s-old" else 0.0), "config.beta1": 0.9,
            "config.batch_size": 32 * (j + 1), "config.hidden": 64 * (j + 1), "config.layers": 2,
            "config.activation": "relu", "config.dropout": 0.1 * j, "config.patience": 5 if is_best else None,
            "config.grad_clip": 1.0, "best_val_loss": best_value if is_best else best_value + 0.1 * (j + 1),
            "epochs": 4, "train_time_s": 1.5,
        })
    return rows


def metrics_for(sweep_id: str, epochs: range) -> list[dict]:
    return [{"sweep_id": sweep_id, "trial_id": f"t{j}", "generation": 0, "epoch": e, "val_loss": 1.0 / (e + j)}
            for j in range(3) for e in epochs]


@pytest.fixture(scope="module")
def config_text() -> tuple[str, dict]:
    from orchestrator.config import load as config
    from orchestrator.config import schema

    cfg = config.load(CONFIG)
    return config.to_yaml(cfg), schema.hyperparameter_types(cfg)


def fill(root: str | Path, config_text: tuple[str, dict]) -> Store:
    """Two studies; three sweeps of one, each its sweeps row, its trials and its metrics in two
    files (epoch 2 of each trial in both): 14 files."""
    text, types = config_text
    s = Store(root)
    for sid in ("s-mid", "s-new", "s-old"):  # out of time order, as resumed sweeps write them
        days, best, value = SWEEPS[sid]
        s.append("sweeps", STUDY, [{
            "sweep_id": sid, "reason": "manual", "parent_sweep_id": None, "scheduler": "asha",
            "searcher": "random", "config_yaml": text, "started_at": T0 + timedelta(days=days),
            "ended_at": T0 + timedelta(days=days, hours=1), "num_trials": 3, "best_trial_id": best,
            "metric": "val_loss", "mode": "min", "best_value": value, "data_fingerprint": "0123456789abcdef",
            "orch_version": "0.1.0"}], sid)
        s.append("trials", STUDY, trials_for(sid, best, value), sid, types=types)
        s.append("metrics", STUDY, metrics_for(sid, range(1, 3)), sid)
        s.append("metrics", STUDY, metrics_for(sid, range(2, 5)), sid)  # epoch 2 again: the first one wins
    s.append("sweeps", OTHER, [{
        "sweep_id": "o-1", "scheduler": "fifo", "searcher": "random", "config_yaml": text,
        "started_at": T0 + timedelta(days=1, hours=5), "ended_at": T0 + timedelta(days=1, hours=6),
        "best_trial_id": "t0", "metric": "val_loss", "mode": "min", "best_value": 0.5}], "o-1")
    s.append("trials", OTHER, trials_for("o-1", "t0", 0.5), "o-1", types=types)
    return s


def prefix(uri: str) -> str:
    """The keys' prefix of a store URI (``s3://orch-test/name`` -> ``name/``)."""
    return uri.split(f"s3://{S3_BUCKET}/", 1)[1] + "/"


def objects(s3: S3, uri: str) -> list[str]:
    """The store's objects, relative to it (pyarrow's empty "directory" markers left out)."""
    p = prefix(uri)
    return sorted(k[len(p):] for k in s3.keys(p) if not k.endswith("/"))


def parquet_objects(s3: S3, uri: str, under: str = "") -> list[str]:
    return [k for k in objects(s3, uri) if k.endswith(".parquet") and k.startswith(under)]


def read_all(s: Store) -> dict[str, pd.DataFrame]:
    return {t: s.read(t) for t in TABLES if s.files(t)}


@pytest.fixture
def here(tmp_path: Path) -> Path:
    """An empty working directory for the commands: it must stay empty."""
    d = tmp_path / "cwd"
    d.mkdir()
    return d


def left_nothing_local(here: Path) -> None:
    assert list(here.iterdir()) == [], list(here.iterdir())
    assert not (ROOT / "s3:").exists()


def ok(p) -> str:  # noqa: ANN001 - a CompletedProcess, or a Run of cli()
    code = p.returncode if hasattr(p, "returncode") else p.code
    assert code == 0, f"exit {code}\nstdout: {p.stdout}\nstderr: {p.stderr}{getattr(p, 'detail', '')}"
    return p.stdout


# -- orch results, orch best, orch report -----------------------------------------------------------


def test_results_and_best_read_an_s3_store_as_a_local_one(s3_server: S3, s3_store: str, config_text,
                                                          tmp_path: Path, here: Path) -> None:
    fill(s3_store, config_text)
    local = tmp_path / "local"
    fill(local, config_text)
    assert len(parquet_objects(s3_server, s3_store)) == 14

    got = json.loads(ok(orch("results", "--store", s3_store, "--format", "json", cwd=here)))
    assert [r["sweep_id"] for r in got] == NEWEST_FIRST
    assert got[0]["best_config"].startswith("lr=0.002 batch_size=64 hidden=128 dropout=0.1")
    for fmt in ("csv", "table"):
        assert ok(cli("results", "--store", s3_store, "--format", fmt)) == \
            cli("results", "--store", local, "--format", fmt).stdout
    one = ok(cli("results", "--store", s3_store, "--study", OTHER, "--format", "csv"))
    assert pd.read_csv(io.StringIO(one))["sweep_id"].tolist() == ["o-1"]

    # $ORCH_STORE names the store as --store does.
    best = ok(orch("best", STUDY, cwd=here, env={"ORCH_STORE": s3_store}))
    assert best.startswith(f"# best of study {STUDY}: sweep s-old, trial t2, val_loss = 0.11 (min)")
    assert best == cli("best", STUDY, "--store", local).stdout
    assert yaml.safe_load(best)["train"]["batch_size"] == 96
    assert "sweep s-new, trial t1" in ok(cli("best", STUDY, "--store", s3_store, "--sweep", "s-new"))

    # <store>/best/<study>.yaml, which a promoted sweep writes, is an object of the store.
    from orchestrator.store import queries

    path = queries.write_best_file(s3_store, STUDY)
    assert str(path) == f"{s3_store}/best/{STUDY}.yaml" and path.read_text() == best
    assert f"best/{STUDY}.yaml" in objects(s3_server, s3_store)
    left_nothing_local(here)


@pytest.mark.slow
def test_report_goes_under_the_s3_prefix_or_to_a_local_out(s3_server: S3, s3_store: str, config_text,
                                                          tmp_path: Path, here: Path) -> None:
    fill(s3_store, config_text)
    out = ok(orch("report", STUDY, "--store", s3_store, cwd=here))
    where = f"{s3_store}/reports/{STUDY}/s-new"
    assert f"Report of sweep s-new of {STUDY}: {where}/report.html" in out
    reports = [k for k in objects(s3_server, s3_store) if k.startswith("reports/")]
    assert reports == [f"reports/{STUDY}/s-new/{n}" for n in
                       ("knobs.png", "learning_curves.png", "parallel_coordinates.png", "report.html",
                        "study_history.png")]
    page = fs.as_path(f"{where}/report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    assert fs.as_path(f"{where}/knobs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    left_nothing_local(here)

    # --out: a local directory, the store in S3.
    from orchestrator.report import page as report_mod

    rep = report_mod.build(s3_store, STUDY, "s-old", out=tmp_path / "r")
    assert rep.html == tmp_path / "r" / "report.html" and rep.html.is_file()
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["knobs.png", "learning_curves.png",
                                                                  "parallel_coordinates.png", "report.html",
                                                                  "study_history.png"]
    assert not any(k.startswith(f"reports/{STUDY}/s-old") for k in objects(s3_server, s3_store))


# -- orch store compact, orch store verify ------------------------------------------------------------


def test_compact_and_verify_an_s3_store(s3_server: S3, s3_store: str, config_text, tmp_path: Path,
                                        here: Path) -> None:
    s = fill(s3_store, config_text)
    local = tmp_path / "local"
    fill(local, config_text)
    before = read_all(s)
    assert len(before["metrics"]) == 3 * 3 * 4  # the repeated epoch read once

    verified = ok(cli("store", "verify", "--store", s3_store))
    assert verified == f"Store {s3_store}: 3 tables, 2 studies, 14 files, 61 rows; no problems.\n"
    assert verified.replace(s3_store, str(local)) == cli("store", "verify", "--store", local).stdout

    text = ok(orch("store", "compact", "--store", s3_store, cwd=here))
    assert "trials: 1 partition, 3 files -> 1, 9 rows" in text
    assert "metrics: 1 partition, 6 files -> 1, 36 rows (9 duplicate rows dropped)" in text
    assert text.splitlines()[-1].startswith("Compacted 3 of 5 partitions: 12 files -> 3 in ")
    local_text = cli("store", "compact", "--store", local).stdout
    assert text.splitlines()[:-1] == local_text.splitlines()[:-1]

    # One merged file per partition (the other study's sweeps was one file already), a manifest
    # beside each, no temporary object, no lock left; every row kept, in the same order.
    parquet = parquet_objects(s3_server, s3_store)
    assert len(parquet) == 5
    assert {k.rsplit("/", 1)[1].startswith(MERGED_PREFIX) for k in parquet if "study=other" not in k} == {True}
    assert all(not k.endswith(".tmp") and ".lock" not in k for k in objects(s3_server, s3_store))
    assert f"metrics/study={STUDY}/{MANIFEST}" in objects(s3_server, s3_store)
    for t, df in before.items():
        pd.testing.assert_frame_equal(s.read(t), df, obj=t)
    assert ok(cli("store", "compact", "--store", s3_store)).startswith("Nothing to compact")
    assert ok(orch("store", "verify", "--store", s3_store, cwd=here)) == \
        f"Store {s3_store}: 3 tables, 2 studies, 5 files, 52 rows; no problems.\n"

    # A damaged object: verify says which (exit 1); compaction leaves its partition and goes on.
    bad = fs.as_path(f"{s3_store}/trials/study={OTHER}/o-2-20240101T000000000000-deadbeef.parquet")
    bad.write_bytes(b"PAR1 not parquet")
    fs.as_path(f"{s3_store}/trials/notes.txt").write_text("mine")
    p = cli("store", "verify", "--store", s3_store)
    assert p.code == 1, p.stderr
    assert f"unreadable: trials/study={OTHER}/{bad.name}: " in p.stdout
    assert "outside the layout: trials/notes.txt" in p.stdout
    s.append("metrics", OTHER, metrics_for("o-1", range(1, 3)), "o-1")
    s.append("metrics", OTHER, metrics_for("o-1", range(3, 4)), "o-1")
    p = cli("store", "compact", "--store", s3_store)
    assert p.code == 1 and f"trials/study={OTHER}: not compacted: cannot read {bad.name}" in p.stdout
    assert "metrics: 1 partition, 2 files -> 1, 9 rows" in p.stdout
    left_nothing_local(here)


def _raw_rows(s: Store, table: str) -> pd.DataFrame:
    """The rows of the files orch's readers would read now, without de-duplication."""
    for _ in range(50):
        try:
            parts = []
            for f in s.files(table):
                parts.append(_read_file(f, None).to_pandas().assign(study=f.parent.name[6:]))
        except FileNotFoundError:  # deleted by the compaction since the listing (even since it was opened)
            continue
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(KEYS[table]))
    raise AssertionError("files kept changing")


def test_a_reader_sees_every_row_once_in_every_window_of_an_s3_compaction(
        s3_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # As tests/test_store_admin.py does locally: the compaction pauses after each of its steps
    # until a reader thread has read once more. In S3 the merged files are uploaded one after the
    # other under their final names once the manifest lists them; the reader reads between them too.
    from tests.test_store_admin import trials

    root = fs.as_path(s3_store)
    s = Store(root)
    written: list[int] = []
    errors: list[str] = []

    def check() -> None:
        expected = 4 * len(written)
        raw = _raw_rows(s, "trials")
        keys = list(zip(raw["sweep_id"], raw["trial_id"], strict=True))
        if len(keys) != len(set(keys)):
            errors.append(f"duplicated rows: {len(keys)} rows, {len(set(keys))} keys")
        if len(set(keys)) < expected:
            errors.append(f"missing rows: {len(set(keys))} of at least {expected}")
        if len(s.trials()) < expected:
            errors.append(f"Store.read gave {len(s.trials())} rows, expected at least {expected}")

    def append(n: int) -> None:
        for _ in range(n):
            j = len(written)
            s.append("trials", "a", trials(f"s{j}", 0, 4), f"s{j}")
            written.append(j)

    append(2)
    with reading_during_compaction(monkeypatch, ("write_manifest", "put_merged", "publish"), check,
                                   lambda: len(written), errors) as windows:
        for _ in range(2):
            append(3)
            maintenance.compact(root, max_rows=5)
    assert not errors, errors[:5]
    # Each compaction: the manifest, each merged file, publish done, the manifest cleared.
    steps = [step for _, step in windows]
    assert steps.count("publish") == 2 and steps.count("write_manifest") == 4
    assert steps.count("put_merged") == 4 + 3  # 20 rows in 4 files of 5; then 12 rows more in 3 files
    assert len(s.trials()) == 32 and len(s.files("trials")) == 7


def test_an_interrupted_s3_compaction_is_rolled_back_or_finished(s3_store: str) -> None:
    from tests.test_store_admin import trials

    root = fs.as_path(s3_store)
    s = Store(root)
    for i in range(5):
        s.append("trials", "a", trials("s1", 3 * i, 3), "s1")
    before = s.trials()
    d = root / "trials" / "study=a"
    inputs = s.files("trials", "a")
    data, finals, rows, _ = maintenance.write_merged("trials", d, inputs, max_rows=6)
    assert len(finals) == 3 and rows == 15 and all(isinstance(b, bytes) for b in data)
    assert len(fs.names(d)) == 5  # nothing uploaded yet: the merged files wait in memory

    # Crash after the manifest and the first upload: the merged files are not all there.
    maintenance.write_manifest(d, [{"merged": finals, "superseded": [f.name for f in inputs]}])
    maintenance.put_merged(d / finals[0], data[0])
    assert [f.name for f in s.files("trials", "a")] == [f.name for f in inputs]
    pd.testing.assert_frame_equal(s.trials(), before)
    report = maintenance.compact(root, max_rows=6)
    assert "rolled back an interrupted compaction (1 merged file removed)" in report.text()
    pd.testing.assert_frame_equal(s.trials(), before)

    # Crash after the last upload, before the superseded files are deleted: readers read the
    # merged files only; the next compaction deletes the rest.
    inputs = s.files("trials", "a")
    data, finals, _, _ = maintenance.write_merged("trials", d, inputs, max_rows=4)
    maintenance.publish(d, data, finals, [f.name for f in inputs])
    assert [f.name for f in s.files("trials", "a")] == finals
    pd.testing.assert_frame_equal(s.trials(), before)
    report = maintenance.compact(root, max_rows=4)
    assert f"deleted {len(inputs)} files superseded by an interrupted compaction" in report.text()
    assert sorted(maintenance.parquet_names(d)) == finals
    pd.testing.assert_frame_equal(s.trials(), before)


def test_compactions_on_s3_take_turns_and_a_stale_lock_is_taken_over(s3_server: S3, s3_store: str, config_text,
                                                                     here: Path) -> None:
    fill(s3_store, config_text)
    lock = fs.as_path(s3_store) / maintenance.LOCK_NAME
    with fs.lock(lock, timeout=0):
        assert maintenance.LOCK_NAME in objects(s3_server, s3_store)  # an object, not a local file
        p = cli("store", "compact", "--store", s3_store)
        assert p.code == 1 and p.stderr.strip() == \
            f"orch: error: another compaction is running on {s3_store} (lock {lock})"
        # verify waits for the compaction to finish.
        proc = orch_process("store", "verify", "--store", s3_store, cwd=here)
        try:
            assert proc.stderr.readline() == f"orch: waiting for the compaction running on {s3_store} to finish\n"
            assert proc.poll() is None
        except BaseException:
            proc.kill()
            raise
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.endswith("; no problems.\n")

    # A holder that died 7 hours ago (fs.lock takes over after 6).
    since = (datetime.now(timezone.utc) - timedelta(hours=7)).isoformat()
    lock.write_text(json.dumps({"token": "dead", "host": "elsewhere", "pid": 1, "since": since}))
    text = ok(cli("store", "compact", "--store", s3_store))
    assert "Compacted 3 of 5 partitions" in text
    assert maintenance.LOCK_NAME not in objects(s3_server, s3_store)
    # A holder that is not stale yet keeps it.
    lock.write_text(json.dumps({"token": "alive", "host": "elsewhere", "pid": 1,
                                "since": datetime.now(timezone.utc).isoformat()}))
    p = cli("store", "compact", "--store", s3_store)
    assert p.code == 1 and "another compaction is running" in p.stderr
    left_nothing_local(here)


# -- orch retune ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_retune_finds_the_stale_studies_of_an_s3_store(s3_server: S3, s3_store: str, config_text,
                                                     here: Path) -> None:
    fill(s3_store, config_text)
    now = (T0 + timedelta(days=200)).isoformat()
    out = ok(orch("retune", "--all", "--store", s3_store, "--now", now, "--dry-run", cwd=here))
    lines = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    assert set(lines) == {STUDY, OTHER}
    assert "stale" in lines[STUDY] and "data_changed" in lines[STUDY] and "stale_age" in lines[STUDY]
    decisions = Store(s3_store).read("decisions")
    assert sorted(decisions["study"]) == sorted([STUDY, OTHER])
    assert set(decisions["outcome"]) == {"dry run"}
    assert len([k for k in objects(s3_server, s3_store) if k.startswith("decisions/")]) == 2
    assert out == ok(cli("retune", OTHER, STUDY, "--store", s3_store, "--now", now, "--dry-run"))
    assert len(Store(s3_store).read("decisions")) == 2  # (decided at the same --now: the same rows)

    from orchestrator.retune import cron

    root = fs.as_path(s3_store)
    # Another orch retune holds the store: this one does nothing.
    with cron.exclusive(root) as got:
        assert got is True and cron.LOCK_NAME in objects(s3_server, s3_store)
        assert cron.holder(root).pid == os.getpid()
        p = cli("retune", "--all", "--store", s3_store, "--dry-run")
        assert p.code == 0 and p.stdout.startswith(f"another orch retune is running on {s3_store} "
                                                         f"(pid {os.getpid()}, since ")
        assert p.stdout.rstrip().endswith("; nothing to do")
        # The holder keeps its lock alive.
        first = json.loads((root / cron.LOCK_NAME).read_bytes())
        assert cron.refresh_lock(root / cron.LOCK_NAME)
        again = json.loads((root / cron.LOCK_NAME).read_bytes())
        assert again["token"] == first["token"] and again["started"] == first["since"] < again["since"]
    assert cron.LOCK_NAME not in objects(s3_server, s3_store)
    # One whose holder died (not refreshed for longer than LOCK_STALE_S) is taken over.
    since = (datetime.now(timezone.utc) - timedelta(seconds=cron.LOCK_STALE_S + 60)).isoformat()
    (root / cron.LOCK_NAME).write_text(json.dumps({"token": "dead", "host": "elsewhere", "pid": 1, "since": since}))
    later = (T0 + timedelta(days=201)).isoformat()
    out = ok(cli("retune", STUDY, "--store", s3_store, "--now", later, "--dry-run"))
    assert "stale" in out and len(Store(s3_store).read("decisions")) == 3
    assert cron.LOCK_NAME not in objects(s3_server, s3_store)
    left_nothing_local(here)


def test_retune_crontab_line_keeps_the_s3_store_and_logs_locally(s3_server: S3, s3_store: str,
                                                                  tmp_path: Path) -> None:
    from orchestrator.retune import cron

    home = tmp_path / "home"
    line = ok(cli("retune", "--all", "--store", s3_store, "--dry-run", "--print-cron", "0 3 * * *",
                  env={"ORCH_HOME": str(home)}))
    log = cron.log_path(fs.as_path(s3_store)).name
    assert log.startswith("retune-") and log.endswith(".log")
    assert f" --store {s3_store} " in line
    assert f">> {home / log} 2>&1" in line and line.rstrip().endswith(f"# {cron.marker(fs.as_path(s3_store))}")
    assert f"AWS_ENDPOINT_URL={s3_server.endpoint}" in line and "AWS_SECRET_ACCESS_KEY" not in line
    assert cron.marker(fs.as_path(s3_store)) == cron.marker(s3_store) != cron.marker(s3_store + "-other")
    assert not any(k.endswith("retune.log") for k in objects(s3_server, s3_store))


@pytest.mark.slow
def test_the_retune_service_finds_the_stale_studies_of_an_s3_store(s3_server: S3, s3_store: str, config_text,
                                                                   here: Path) -> None:
    from orchestrator.retune import cron

    fill(s3_store, config_text)
    # The service: each run finds the stale studies in the store, until SIGTERM.
    proc = orch_process("retune", "--all", "--store", s3_store, "--dry-run", "--every", "*/2 * * * * *",
                        cwd=here, merge_stderr=True)
    seen = []
    guard = threading.Timer(180, proc.kill)  # (a guard against a hang only)
    guard.start()
    try:
        for text in iter(proc.stdout.readline, ""):
            seen.append(text)
            if text.startswith(tuple(f"orch retune: run 1 {end}" for end in ("finished", "failed", "exited"))):
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = "".join(seen) + rest
    assert proc.returncode == 0, out
    assert "orch retune: run 1 finished" in out and "stopped by SIGTERM" in out
    assert STUDY in out and "stale" in out
    assert len(Store(s3_store).read("decisions")) >= 2
    assert cron.LOCK_NAME not in objects(s3_server, s3_store)
    left_nothing_local(here)


@pytest.mark.slow
def test_a_retune_of_an_s3_store_runs_its_sweep_in_that_store(s3_server: S3, s3_store: str, here: Path) -> None:
    from orchestrator.config import load as config
    from orchestrator.config import schema

    cfg = config.load(CONFIG, ["ray.num_cpus=2", "scheduler.max_epochs=2", "scheduler.grace_period=1",
                               "data.source=sklearn:iris"])
    fill(s3_store, (config.to_yaml(cfg), schema.hyperparameter_types(cfg)))
    later = (T0 + timedelta(days=200)).isoformat()
    p = orch("retune", STUDY, "retune.num_samples=2", "retune.top_k=2", "--store", s3_store, "--now", later,
             "--no-drift", cwd=here, timeout=600)
    out = ok(p)
    assert f"Re-tuning {STUDY} (stale_age, data_changed)" in out, out
    sweeps = Store(s3_store).sweeps(STUDY)
    new = sweeps[~sweeps["sweep_id"].isin(list(SWEEPS))]
    assert len(new) == 1, sweeps
    row = new.iloc[0]
    assert row["reason"] == "data_changed" and row["parent_sweep_id"] == "s-old"
    assert len(Store(s3_store).trials(STUDY, sweep_id=row["sweep_id"])) == 2
    decision = Store(s3_store).read("decisions", STUDY).iloc[-1]
    assert decision["retune_sweep_id"] == row["sweep_id"]
    assert any(k.startswith(f"_ray/{row['sweep_id']}/") for k in objects(s3_server, s3_store))
    left_nothing_local(here)


# -- one-line errors --------------------------------------------------------------------------------


def test_bad_s3_stores_are_one_line_errors(s3_server: S3, s3_store: str, config_text) -> None:
    missing = "s3://no-such-bucket/x"
    for args in (("results",), ("store", "compact"), ("store", "verify")):
        assert_user_error(cli(*args, "--store", missing), f"no results store at {missing} (no bucket 'no-such-bucket')")
    assert_user_error(cli("best", STUDY, "--store", missing), f"'{STUDY}'", missing)
    assert_user_error(cli("report", STUDY, "--store", missing), f"'{STUDY}'", missing)
    assert_user_error(cli("retune", "--all", "--store", missing, "--dry-run"),
                      f"no results store at {missing} (no bucket 'no-such-bucket')")
    for args in (("results",), ("store", "verify"), ("retune", "--all", "--dry-run")):
        assert_user_error(cli(*args, "--store", "ftp://x/y"), "ftp://x/y", "unknown scheme 'ftp'")
    assert_user_error(cli("results", "--store", "s3://"), "no bucket")
    # A prefix that holds something else, or nothing.
    fs.as_path(f"{s3_store}/notes.txt").write_text("mine")
    assert_user_error(cli("store", "compact", "--store", s3_store), f"{s3_store} holds no results store")
    assert_user_error(cli("store", "verify", "--store", f"{s3_store}-nothing"), f"no results store at {s3_store}")
    # An object, not a prefix.
    assert_user_error(cli("results", "--store", f"{s3_store}/notes.txt"), "(an object, not a prefix)")


@pytest.mark.slow
def test_an_unreachable_endpoint_is_a_one_line_error(s3_server: S3) -> None:
    port = free_port()  # nothing listens there
    uri = f"s3://unreachable-{uuid.uuid4().hex[:8]}/x"  # a bucket no filesystem of this process was made for
    run = cli("results", "--store", uri, env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    line = assert_user_error(run, f"store: cannot use {uri}", f"127.0.0.1 port {port}", "(--store or $ORCH_STORE)")
    assert len(line) < 500
