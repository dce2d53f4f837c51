"""`orch retune`: staleness rules with a moved clock and a changed data file, warm starts, promotion
only on improvement, lineage in the store, the service loop and the lock."""

from __future__ import annotations

import json
import shutil
import signal
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris

from orchestrator.store.tables import Store
from tests.conftest import CONFIG, orch, orch_process

STUDY = "test-retune"


def _iris_csv(path: Path, shuffle_labels: bool = False, drop: int = 0) -> Path:
    frame = load_iris(as_frame=True).frame.rename(columns={"target": "species"})
    if drop:
        frame = frame.iloc[drop:]
    if shuffle_labels:
        frame["species"] = np.random.default_rng(0).permutation(frame["species"].to_numpy())
    frame.to_csv(path, index=False)
    return path


SWEEP = [f"study={STUDY}", "ray.num_cpus=2", "data.source=null", "data.target=species", "scheduler.name=fifo",
         "scheduler.max_epochs=3", "search.num_samples=4", "search_space={lr: {loguniform: [0.001, 0.1]}, "
         "batch_size: {pow2: [16, 64]}}"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A store with one finished sweep of a study whose data is a CSV file next to it."""
    root = tmp_path_factory.mktemp("retune")
    csv = _iris_csv(root / "iris.csv")
    p = orch("sweep", CONFIG, *SWEEP, f"data.path={csv}", "--store", root / "store")
    assert p.returncode == 0, p.stderr
    return root


@pytest.fixture
def world(base: Path, tmp_path: Path) -> tuple[Path, Path, pd.Series]:
    """A private copy of the base store and its data: (store, csv, the sweep row)."""
    shutil.copytree(base, tmp_path / "w")
    store, csv = tmp_path / "w" / "store", tmp_path / "w" / "iris.csv"
    sweeps = Store(store).sweeps(STUDY)
    row = sweeps.iloc[0]
    # The stored config names the data by its absolute path: point it at this copy.
    text = row["config_yaml"].replace(str(base / "iris.csv"), str(csv))
    table = pd.read_parquet(next((store / "sweeps" / f"study={STUDY}").glob("*.parquet")))
    table["config_yaml"] = text
    f = next((store / "sweeps" / f"study={STUDY}").glob("*.parquet"))
    table.to_parquet(f, index=False)
    return store, csv, Store(store).sweeps(STUDY).iloc[0]


def at(row: pd.Series, days: float) -> str:
    return (pd.Timestamp(row["ended_at"]).to_pydatetime() + timedelta(days=days)).isoformat()


def decisions(store: Path) -> pd.DataFrame:
    return Store(store).read("decisions", STUDY)


def test_fresh_study_is_left_alone(world) -> None:
    store, _, row = world
    r = orch("retune", STUDY, "--store", store, "--now", at(row, 1), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "fresh" in r.stdout and "stale" not in r.stdout
    d = decisions(store).iloc[-1]
    assert d["verdict"] == "fresh" and json.loads(d["reasons"]) == []
    assert json.loads(d["evidence"])["age_days"] == pytest.approx(1, abs=0.01)


@pytest.mark.slow
def test_age_rule_fires_past_max_age(world) -> None:
    store, _, row = world
    r = orch("retune", STUDY, "--store", store, "--now", at(row, 91), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "stale" in r.stdout and "stale_age" in r.stdout
    assert len(Store(store).sweeps(STUDY)) == 1  # dry run: nothing trained
    # The policy is overridable on the command line.
    r = orch("retune", STUDY, "retune.max_age_days=120", "--store", store, "--now", at(row, 91), "--dry-run")
    assert "fresh" in r.stdout
    bad = orch("retune", STUDY, "retune.max_age=3", "--store", store, "--dry-run")
    assert bad.returncode == 2 and "retune.max_age" in bad.stderr and "max_age_days" in bad.stderr


def test_data_change_rule_fires_on_a_changed_file(world) -> None:
    store, csv, row = world
    _iris_csv(csv, drop=10)
    r = orch("retune", STUDY, "--store", store, "--now", at(row, 1), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "data_changed" in r.stdout and "stale_age" not in r.stdout
    ev = json.loads(decisions(store).iloc[-1]["evidence"])
    assert ev["fingerprint_then"] == row["data_fingerprint"] != ev["fingerprint_now"]
    r = orch("retune", STUDY, "retune.on_data_change=false", "--store", store, "--now", at(row, 1), "--dry-run")
    assert "fresh" in r.stdout


@pytest.mark.slow
def test_drift_rule_retrains_the_best_and_compares(world) -> None:
    store, csv, row = world
    # Same data: the best config re-trained scores what it scored (the same seed): no drift.
    r = orch("retune", STUDY, "retune.on_data_change=false", "--store", store, "--now", at(row, 1),
             "--print-cron", "0 3 * * 1")  # (a cron line only: nothing runs)
    assert r.returncode == 0 and "orch" in r.stdout
    r = orch("retune", STUDY, "retune.on_data_change=false", "retune.num_samples=1", "retune.top_k=1",
             "--store", store, "--now", at(row, 1))
    assert r.returncode == 0, r.stderr
    ev = json.loads(decisions(store).iloc[-1]["evidence"])
    assert ev["worse_by"] == pytest.approx(0, abs=0.02) and "fresh" in r.stdout
    # Shuffled labels: the same config is much worse on today's data.
    _iris_csv(csv, shuffle_labels=True)
    r = orch("retune", STUDY, "retune.on_data_change=false", "--store", store, "--now", at(row, 1), "--dry-run")
    assert "fresh" in r.stdout  # a dry run trains nothing, so no drift check
    r = orch("retune", STUDY, "retune.on_data_change=false", "retune.num_samples=1", "retune.top_k=1",
             "--store", store, "--now", at(row, 1))
    assert r.returncode == 0, r.stderr
    d = decisions(store).iloc[-1]
    ev = json.loads(d["evidence"])
    assert "drift" in json.loads(d["reasons"]) and ev["worse_by"] > 0.02
    assert ev["rescored"] > ev["best_value"]


@pytest.mark.slow
def test_retune_warm_starts_records_lineage_and_promotes_only_on_improvement(world) -> None:
    store, _, row = world
    old_best = Store(store).trials(STUDY)
    old_best = old_best[old_best["trial_id"] == row["best_trial_id"]].iloc[0]
    # One trial, the previous best config: the re-tune reaches exactly the current best: kept.
    r = orch("retune", STUDY, "retune.num_samples=1", "retune.top_k=1", "--no-drift", "--store", store,
             "--now", at(row, 100))
    assert r.returncode == 0, r.stderr
    assert "kept the current best" in r.stdout
    sweeps = Store(store).sweeps(STUDY).sort_values("ended_at")
    assert len(sweeps) == 2
    new = sweeps.iloc[-1]
    assert new["reason"] == "stale_age" and new["parent_sweep_id"] == row["sweep_id"] and not new["promoted"]
    trials = Store(store).trials(STUDY)
    first = trials[trials["sweep_id"] == new["sweep_id"]].iloc[0]
    for knob in ("lr", "batch_size"):  # the previous best went first
        assert first[f"config.{knob}"] == pytest.approx(old_best[f"config.{knob}"])
    b = orch("best", STUDY, "--store", store)
    assert f"sweep {row['sweep_id']}" in b.stdout  # still the old best

    # A wider re-tune: the previous top configs go first, the space is zoomed around them.
    r = orch("retune", STUDY, "retune.num_samples=6", "--no-drift", "--store", store, "--now", at(row, 200))
    assert r.returncode == 0, r.stderr
    sweeps = Store(store).sweeps(STUDY).sort_values("ended_at")
    third = sweeps.iloc[-1]
    saved = json.loads(third["search_space"])
    assert saved["lr"][0] >= 0.001 and saved["lr"][1] <= 0.1
    current = sweeps[sweeps["promoted"].fillna(False).astype(bool)].sort_values("ended_at").iloc[-1]
    if third["promoted"]:
        assert third["best_value"] < row["best_value"] and "promoted" in r.stdout
        assert current["sweep_id"] == third["sweep_id"]
    else:
        assert third["best_value"] >= row["best_value"] - 1e-9 and "kept the current best" in r.stdout
    best_file = store / "best" / f"{STUDY}.yaml"
    assert best_file.is_file() and f"sweep {current['sweep_id']}" in best_file.read_text()
    # The study's model moved with its config (<store>/best/<study>/, one link swapped).
    model = json.loads((store / "best" / STUDY / "model" / "model.json").read_text())["record"]
    assert (model["sweep_id"], model["trial_id"]) == (current["sweep_id"], current["best_trial_id"])
    assert f"sweep {current['sweep_id']}" in (store / "best" / STUDY / "best.yaml").read_text()
    assert f"sweep {current['sweep_id']}" in orch("best", STUDY, "--store", store).stdout


@pytest.mark.slow
def test_two_retunes_at_once_only_one_works(world) -> None:
    store, _, row = world
    args = ["retune", STUDY, "retune.num_samples=1", "retune.top_k=1", "--no-drift",
            "--store", store, "--now", at(row, 100)]
    procs = [orch_process(*args, merge_stderr=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("another orch retune is running" in o for o in outs) == 1, outs
    assert len(Store(store).sweeps(STUDY)) == 2  # one re-tune sweep, not two


def test_every_runs_the_job_at_the_cron_time(world) -> None:
    store, _, row = world
    # As a service, every 3 seconds (a six-field expression, seconds first): it reports the next
    # run and runs at it; SIGTERM (how `docker compose stop` ends it) stops it cleanly.
    p = orch_process("retune", STUDY, "--store", store, "--dry-run", "--every", "*/3 * * * * *",
                     merge_stderr=True)
    deadline = time.monotonic() + 60
    n_before = len(decisions(store)) if (store / "decisions").exists() else 0
    while time.monotonic() < deadline:
        if (store / "decisions").exists() and len(decisions(store)) > n_before:
            break
        time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=30)[0]
    assert p.returncode == 0, out
    assert len(decisions(store)) > n_before, out
    assert "next run at" in out
