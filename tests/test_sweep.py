"""End to end: ``orch sweep`` as a subprocess on a real local Ray, writing a real Parquet store."""

from __future__ import annotations

import re
import signal
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import (
    CONFIG,
    ROOT,
    SMALL,
    descendants,
    end_process,
    finished_trials,
    kill_driver_at,
    orch,
    outlived,
    start_sweep,
    store_rows,
    wait_for_trials,
)


def test_mini_sweep_end_to_end(store: Path) -> None:
    # Five trials; the first is a learning rate that must diverge in its first epoch (SGD without
    # clipping, small batches: many steps, so the loss is NaN before ASHA's first rung).
    p = orch("sweep", CONFIG, *SMALL, "search.num_samples=5", "train.optimizer=sgd", "train.grad_clip=null",
             "search.points_to_evaluate=[{lr: 100000.0, batch_size: 16}]", "--store", store)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "Ray dashboard: http://127.0.0.1:" in out
    assert "Best trial " in out and "val_loss" in out
    assert f"Results: {store}" in out
    assert "Traceback" not in p.stderr
    # Ray's own tables stay out of the way.
    assert "View detailed results" not in out and "Configuration for experiment" not in out

    trials = store_rows(store, "trials")
    assert len(trials) == 5 and trials["trial_id"].is_unique
    assert set(trials["study"].astype(str)) == {"test-iris"}
    assert {"config.lr", "config.batch_size", "config.hidden", "final_val_loss", "best_val_accuracy",
            "epochs", "train_time_s", "started_at", "ended_at", "node", "status"} <= set(trials.columns)
    assert set(trials["status"]) <= {"completed", "stopped_early", "diverged"}
    diverged = trials[trials["config.lr"] == 100000.0]
    assert diverged["status"].tolist() == ["diverged"]
    assert "non-finite" in diverged["stop_reason"].iloc[0]
    sane = trials[trials["status"] != "diverged"]
    assert sane["best_val_accuracy"].max() > 0.5  # iris: a real model was trained

    metrics = store_rows(store, "metrics")
    assert not metrics.duplicated(["trial_id", "epoch"]).any()
    completed = trials[trials["status"] == "completed"]
    for _, t in completed.iterrows():  # every epoch of a completed trial is in the metrics table
        assert sorted(metrics[metrics["trial_id"] == t["trial_id"]]["epoch"]) == list(range(1, 5))

    sweeps = store_rows(store, "sweeps")
    assert len(sweeps) == 1
    s = sweeps.iloc[0]
    assert s["best_trial_id"] in set(sane["trial_id"])
    assert s["best_value"] == pytest.approx(sane["best_val_loss"].min())
    assert s["metric"] == "val_loss" and s["mode"] == "min" and len(s["data_fingerprint"]) == 16
    saved = yaml.safe_load(s["config_yaml"])
    assert saved["data"]["source"] == "sklearn:iris" and "lr" in saved["search_space"]

    import duckdb

    n = duckdb.sql(f"select count(*) from read_parquet('{store}/trials/**/*.parquet', hive_partitioning = true)"
                   " where study = 'test-iris'").fetchall()[0][0]
    assert n == 5

    # The results commands read it back.
    r = orch("results", "--store", store)
    assert r.returncode == 0 and s["sweep_id"] in r.stdout and "test-iris" in r.stdout
    b = orch("best", "test-iris", "--store", store)
    assert b.returncode == 0, b.stderr
    best = yaml.safe_load(b.stdout)
    row = trials[trials["trial_id"] == s["best_trial_id"]].iloc[0]
    assert best["train"]["lr"] == pytest.approx(row["config.lr"])
    assert best["model"]["hidden"] == row["config.hidden"]


@pytest.mark.slow
def test_resume_after_driver_is_killed(store: Path, tmp_path: Path) -> None:
    args = [*SMALL, "scheduler.name=fifo", "scheduler.max_epochs=12", "search.num_samples=8",
            "train.checkpoint_every=2", "model.hidden=32", "--store", str(store)]
    # Killed with trials left to run: at least two finished, not all eight.
    kill_driver_at(start_sweep(args), lambda: 2 <= finished_trials(store) < 8)
    killed_at = pd.Timestamp(datetime.now(timezone.utc))
    before = store_rows(store, "trials")
    assert 2 <= len(before) < 8  # the store as the kill left it: the driver alone writes it
    assert not (store / "sweeps").exists()  # an unfinished sweep has no sweeps row

    p = orch("sweep", CONFIG, *args, "--resume")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Resuming sweep" in p.stdout
    # The last progress line counts the trials that finished before the kill too: it agrees with
    # the summary.
    progress = re.findall(r"trials (\d+)/(\d+) done \| (\d+) running \| (\d+) stopped early",
                          p.stdout)
    assert progress and progress[-1][:3] == ("8", "8", "0"), p.stdout
    summary = re.search(r"finished in \d+s: (.*)\.$", p.stdout, re.MULTILINE)
    assert summary, p.stdout
    counts = {k: int(n) for n, k in re.findall(r"(\d+) ([a-z ]+?)(?:,|$)", summary.group(1))}
    assert sum(counts.values()) == 8, p.stdout
    assert counts.get("stopped early", 0) == int(progress[-1][3]), p.stdout

    after = store_rows(store, "trials")
    assert len(after) == 8 and after["trial_id"].is_unique  # never a trial twice
    assert set(before["trial_id"]) <= set(after["trial_id"])
    # Trials finished before the kill were not run again: their rows are the same files' rows.
    kept = after.set_index("trial_id").loc[before["trial_id"], "ended_at"]
    assert (kept.values == before.set_index("trial_id")["ended_at"].values).all()
    # The others are the resumed run's: they ended after the kill.
    resumed = after[~after["trial_id"].isin(before["trial_id"])]
    assert len(resumed) == 8 - len(before) and (resumed["ended_at"] > killed_at).all()
    metrics = store_rows(store, "metrics")
    assert not metrics.duplicated(["trial_id", "epoch"]).any()
    assert set(metrics["trial_id"]) == set(after["trial_id"])
    sweeps = store_rows(store, "sweeps")
    assert len(sweeps) == 1 and sweeps["num_trials"].iloc[0] == 8


def test_resume_with_nothing_to_resume_is_a_user_error(store: Path) -> None:
    p = orch("sweep", CONFIG, *SMALL, "--store", store, "--resume")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "--resume" in p.stderr and "test-iris" in p.stderr


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_keeps_what_finished(store: Path) -> None:
    args = [*SMALL, "scheduler.name=fifo", "scheduler.max_epochs=30", "search.num_samples=16",
            "model.hidden=32", "--store", str(store)]
    proc = start_sweep(args)
    tree: list[int] = []
    try:
        wait_for_trials(store, 1, proc, timeout=180)
        tree = descendants(proc.pid)
        assert tree, "the embedded Ray runs in child processes"
        interrupted_at = pd.Timestamp(datetime.now(timezone.utc))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        end_process(proc)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "--resume" in out
    assert "Traceback" not in out
    trials = store_rows(store, "trials")
    assert len(trials) >= 1 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "stopped_early"}
    # It stopped instead of running the sweep on: no trial it kept started after the Ctrl-C, the
    # sweep is not recorded as finished, and the summary counts the trials the store kept.
    assert (trials["started_at"] < interrupted_at).all(), trials[["trial_id", "started_at"]]
    assert not (store / "sweeps").exists()
    said = re.search(r"interrupted after \d+s \((.*)\)\.$", out, re.MULTILINE)
    assert said, out
    counts = {k.replace(" ", "_"): int(n) for n, k in re.findall(r"(\d+) ([a-z ]+?)(?:,|$)",
                                                                 said.group(1))}
    assert counts == trials["status"].value_counts().to_dict(), out
    # Ray's processes went with the driver.
    assert not outlived(tree)


@pytest.mark.slow
def test_collapsed_trials_are_flagged_and_never_best(store: Path) -> None:
    """A dead network (every ReLU off) predicts one class: flagged in the store, left out of the best."""
    space = "search_space={lr: {loguniform: [0.001, 0.01]}, bias_init: {choice: [0.0, -10.0]}}"
    p = orch("sweep", CONFIG, *SMALL, "scheduler.name=fifo", "search.num_samples=3", space,
             "search.points_to_evaluate=[{bias_init: -10.0}, {bias_init: 0.0}]", "--store", store)
    assert p.returncode == 0, p.stderr
    trials = store_rows(store, "trials")
    dead = trials[trials["config.bias_init"] == -10.0]
    assert len(dead) >= 1 and dead["collapsed"].all()
    assert (dead["test_top_class_share"] == 1.0).all()
    assert not trials[trials["config.bias_init"] == 0.0]["collapsed"].any()
    sweeps = store_rows(store, "sweeps")
    best = trials[trials["trial_id"] == sweeps["best_trial_id"].iloc[0]]
    assert not best["collapsed"].iloc[0]
    assert f"{len(dead)} trial{'s' if len(dead) != 1 else ''} collapsed to a constant output" in p.stdout
    metrics = store_rows(store, "metrics")
    per_epoch = metrics[metrics["trial_id"].isin(dead["trial_id"])]
    assert (per_epoch["val_collapsed"] == 1.0).all() and len(per_epoch) == 4 * len(dead)


@pytest.mark.slow
def test_a_sweep_of_only_collapsed_trials_reports_no_best(store: Path) -> None:
    p = orch("sweep", CONFIG, *SMALL, "scheduler.name=fifo", "scheduler.max_epochs=2", "search.num_samples=2",
             "model.bias_init=-10", "--store", store)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "No best trial: all 2 trials that finished collapsed to a constant output" in p.stdout
    assert "Best trial" not in p.stdout
    sweeps = store_rows(store, "sweeps")
    assert len(sweeps) == 1 and pd.isna(sweeps["best_trial_id"].iloc[0])
    b = orch("best", "test-iris", "--store", store)
    assert b.returncode == 2 and "no sweep produced a usable trial" in b.stderr


@pytest.mark.slow
def test_regression_sweep_reports_in_the_target_units(store: Path) -> None:
    config = ROOT / "conf" / "tabular_regression.yaml"
    p = orch("sweep", config, "ray.num_cpus=2", "search.num_samples=4", "scheduler.max_epochs=6",
             "scheduler.grace_period=2", "--store", store)
    assert p.returncode == 0, p.stderr
    assert "Best trial" in p.stdout and "val_rmse" in p.stdout and "val_r2" in p.stdout
    trials = store_rows(store, "trials")
    assert len(trials) == 4 and set(trials["study"].astype(str)) == {"tabular-diabetes"}
    ok = trials[trials["status"] != "diverged"]
    # diabetes: disease progression with a spread of about 77; a trained model's RMSE lies in the
    # tens (in standardised units it would be below 1.5).
    assert ok["best_val_rmse"].between(30, 120).all()
    assert ok["best_val_r2"].max() > 0.2
    assert ok["test_rmse"].between(30, 150).all()
    # val_loss is the squared error in units of the target's spread: (rmse / std)^2.
    metrics = store_rows(store, "metrics")
    ratio = metrics["val_loss"] / metrics["val_rmse"] ** 2
    assert ratio.max() / ratio.min() == pytest.approx(1.0, rel=1e-6)
    b = orch("best", "tabular-diabetes", "--store", store)
    fragment = yaml.safe_load(b.stdout)
    assert fragment["train"]["loss"] in ("mse", "huber") and fragment["data"]["target_scale"] == "standard"
