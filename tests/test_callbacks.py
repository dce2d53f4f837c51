"""The driver's Tune callbacks, driven through their hooks with fake trials (no Ray run).

``StoreWriter`` writes the real Parquet store, read back here; ``SweepStatus`` writes the status
file ``orch status`` reads and sets orch's Ray metrics (recorded by a fake); ``Progress`` prints
the progress line. Their clock is a fake too: what is written when depends on the steps only.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from orchestrator.cluster import jobs
from orchestrator.store.tables import Store
from orchestrator.tune import callbacks
from orchestrator.tune.callbacks import Progress, StoreWriter, SweepStatus, trial_status

SWEEP = "20250101-000000-abcd"
STUDY = "fake-study"
BASE = {"lr": 0.01, "hidden": 64, "optimizer": "adam", "dropout": 0.0}
KNOBS = ["lr", "hidden", "momentum"]  # momentum: a conditional knob (not every trial has it)
TYPES = {"config.lr": pa.float64(), "config.hidden": pa.int64(), "config.momentum": pa.float64()}


class Clock:
    """``time.monotonic`` for the callbacks: moves only when a test moves it."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(callbacks, "time", c)
    return c


class FakeTrial:
    """What the callbacks read of a Tune trial, and a trainer's reports for it: epoch ``e`` has
    val_loss ``losses[e - 1]``."""

    def __init__(self, trial_id: str, config: dict[str, Any], losses: list[float],
                 status: str = "PENDING") -> None:
        self.trial_id = trial_id
        self.config = config
        self.status = status
        self.last_result: dict[str, Any] = {}
        self.error_msg: str | None = None
        self.error_file: str | None = None
        self.num_failures = 0
        self.losses = losses
        self.epoch = 0

    def report(self, epochs: int, *, final: bool = False, status: str = "completed",
               reason: str = "") -> dict[str, Any]:
        """The next ``epochs`` epochs as one result, the way the trainer reports them."""
        history = []
        for _ in range(epochs):
            self.epoch += 1
            loss = self.losses[self.epoch - 1]
            history.append({"train_loss": loss + 0.1, "val_loss": loss, "val_accuracy": 1 - loss / 4,
                            "lr": 0.01, "batch_size": 32, "generation": 0, "epoch_time_s": 0.5,
                            "epoch": self.epoch, "timestamp": 1.7e9 + self.epoch})
        seen = [v for v in self.losses[:self.epoch] if math.isfinite(v)]
        best = {"val_loss": min(seen), "train_loss": min(seen) + 0.1,
                "val_accuracy": 1 - min(seen) / 4} if seen else {}
        last = history[-1]
        diverged = status == "diverged"
        result = {**{k: v for k, v in last.items() if k != "epoch_time_s"},
                  "val_loss": math.inf if diverged else last["val_loss"],
                  "history": history, "best": best,
                  "best_epoch": self.losses.index(min(seen)) + 1 if seen else None,
                  "final": final, "trial_status": status if final else "running",
                  "stop_reason": reason, "train_time_s": 0.5 * self.epoch, "collapsed": False,
                  "node_id": "node-1", "hostname": "host-1", "device": "cpu", "gpu_ids": ""}
        if not diverged:
            result["test"] = {"test_loss": last["val_loss"] + 0.05, "test_accuracy": 0.5}
        self.last_result = result
        return result


def started(writer: StoreWriter, trial: FakeTrial, trials: list[FakeTrial]) -> None:
    trial.status = "RUNNING"
    writer.on_trial_start(iteration=0, trials=trials, trial=trial)


def report(cb, trial: FakeTrial, trials: list[FakeTrial], epochs: int, **kwargs) -> dict:
    result = trial.report(epochs, **kwargs)
    cb.on_trial_result(iteration=0, trials=trials, trial=trial, result=result)
    return result


def complete(cb, trial: FakeTrial, trials: list[FakeTrial]) -> None:
    trial.status = "TERMINATED"
    cb.on_trial_complete(iteration=0, trials=trials, trial=trial)


def new_writer(root: Path, **kwargs) -> StoreWriter:
    writer = StoreWriter(str(root), STUDY, SWEEP, BASE, TYPES, KNOBS, flush_interval_s=10,
                         **kwargs)
    writer.setup()
    return writer


def by_id(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index("trial_id")


# -- StoreWriter: the rows -----------------------------------------------------------------------


def test_one_trials_row_per_finished_trial_with_its_status_and_values(tmp_path: Path,
                                                                      clock: Clock) -> None:
    root = tmp_path / "store"
    writer = new_writer(root)
    done = FakeTrial("t_done", {"lr": 0.1, "hidden": 32, "momentum": 0.9, "_stage": 2},
                     [1.0, 0.6, 0.4, 0.5])
    asha = FakeTrial("t_asha", {"lr": 0.2, "hidden": 16}, [1.2, 1.1, 1.0, 0.9])
    patience = FakeTrial("t_patience", {"lr": 0.3, "hidden": 8, "sizes": [8, 4]},
                         [0.9, 0.7, 0.8, 0.85])
    diverged = FakeTrial("t_nan", {"lr": 100.0, "hidden": 8}, [math.nan])
    trials = [done, asha, patience, diverged]
    for t in trials:
        started(writer, t, trials)
    report(writer, done, trials, 2)
    report(writer, done, trials, 2, final=True)
    complete(writer, done, trials)
    report(writer, asha, trials, 2)  # then the scheduler stops it: its last report is not final
    complete(writer, asha, trials)
    report(writer, patience, trials, 4, final=True, status="stopped_early",
           reason="no improvement of val_loss for 2 epochs")
    complete(writer, patience, trials)
    report(writer, diverged, trials, 1, final=True, status="diverged",
           reason="non-finite loss at epoch 1 (lr 100): lower the learning rate")
    complete(writer, diverged, trials)
    writer.on_experiment_end(trials=trials)

    rows = Store(root).trials()
    assert sorted(rows["trial_id"]) == sorted(t.trial_id for t in trials)
    assert set(rows["study"]) == {STUDY} and set(rows["sweep_id"]) == {SWEEP}
    assert writer.trials_written == 4
    got = by_id(rows)
    assert got["status"].to_dict() == {"t_done": "completed", "t_asha": "stopped_early",
                                       "t_patience": "stopped_early", "t_nan": "diverged"}
    assert got.loc["t_asha", "stop_reason"] == "scheduler"
    assert got.loc["t_patience", "stop_reason"] == "no improvement of val_loss for 2 epochs"
    assert got.loc["t_nan", "stop_reason"].startswith("non-finite loss at epoch 1")

    d = got.loc["t_done"]  # the final report's values, and the best of the whole trial
    assert d["final_val_loss"] == 0.5 and d["best_val_loss"] == 0.4 and d["best_epoch"] == 3
    assert d["final_val_accuracy"] == pytest.approx(0.875)
    assert d["best_val_accuracy"] == pytest.approx(0.9)
    assert d["epochs"] == 4 and d["train_time_s"] == 2.0
    assert d["test_loss"] == pytest.approx(0.55) and d["test_accuracy"] == 0.5
    assert d["node"] == "node-1" and d["host"] == "host-1" and d["device"] == "cpu"
    assert d["retries"] == 0 and d["stage"] == 2 and d["generation"] == 0
    assert not d["collapsed"]
    assert d["started_at"] <= d["ended_at"]
    # The trial's config over the base: every knob a column, one a trial does not have is null;
    # the internal keys stay out; a list is stored as JSON.
    assert d["config.lr"] == 0.1 and d["config.hidden"] == 32 and d["config.momentum"] == 0.9
    assert d["config.optimizer"] == "adam" and d["config.dropout"] == 0.0
    assert pd.isna(got.loc["t_asha", "config.momentum"])
    assert json.loads(got.loc["t_patience", "config.sizes"]) == [8, 4]
    assert not any(c.startswith("config._") for c in rows.columns)
    assert got.loc["t_asha", "epochs"] == 2 and got.loc["t_asha", "final_val_loss"] == 1.1
    # A diverged trial's non-finite values are null, not NaN or the infinity the scheduler saw.
    n = got.loc["t_nan"]
    assert pd.isna(n["final_val_loss"]) and pd.isna(n["final_val_accuracy"])
    assert pd.isna(n["best_val_loss"]) and pd.isna(n["test_loss"])


def test_metrics_rows_are_every_epoch_once(tmp_path: Path, clock: Clock) -> None:
    root = tmp_path / "store"
    writer = new_writer(root)
    a = FakeTrial("ta", {"lr": 0.1, "hidden": 32}, [1.0, 0.8, 0.6, 0.5, 0.45])
    b = FakeTrial("tb", {"lr": 0.2, "hidden": 32}, [1.5, 1.4])
    trials = [a, b]
    for t in trials:
        started(writer, t, trials)
    report(writer, a, trials, 1)
    report(writer, b, trials, 2)  # stopped by the scheduler, never completed
    report(writer, a, trials, 3)
    writer.on_trial_result(iteration=0, trials=trials, trial=a, result=a.last_result)  # again
    report(writer, a, trials, 1, final=True)
    complete(writer, a, trials)
    writer.on_experiment_end(trials=trials)

    metrics = Store(root).metrics()
    assert sorted(zip(metrics["trial_id"], metrics["epoch"], strict=True)) == [
        ("ta", 1), ("ta", 2), ("ta", 3), ("ta", 4), ("ta", 5), ("tb", 1), ("tb", 2)]
    rows = metrics.set_index(["trial_id", "epoch"])
    assert rows.loc[("ta", 3), "val_loss"] == 0.6 and rows.loc[("tb", 2), "val_loss"] == 1.4
    assert rows.loc[("ta", 3), "time_s"] == 0.5  # the epoch's time, under the store's name
    assert "epoch_time_s" not in metrics.columns
    assert (metrics["generation"] == 0).all() and metrics["resumed_val_loss"].isna().all()
    assert set(metrics["sweep_id"]) == {SWEEP} and set(metrics["study"]) == {STUDY}
    # The epochs of the trial still running at the end are in the metrics table, not in trials.
    assert list(Store(root).trials()["trial_id"]) == ["ta"]


# -- StoreWriter: what the driver keeps of a trial ----------------------------------------------


def test_a_results_epochs_leave_it_once_buffered_for_the_store(tmp_path: Path, clock: Clock) -> None:
    # Tune keeps each result as the trial's last one, and in its experiment snapshots.
    root = tmp_path / "store"
    writer = new_writer(root)
    trial = FakeTrial("t", {"lr": 0.1, "hidden": 8}, [1.0, 0.8, 0.7])
    trials = [trial]
    started(writer, trial, trials)
    result = report(writer, trial, trials, 2)
    assert "history" not in result
    assert result["val_loss"] == 0.8 and result["best"]["val_loss"] == 0.8 and result["epoch"] == 2
    report(writer, trial, trials, 1, final=True)
    complete(writer, trial, trials)
    writer.flush()
    assert sorted(Store(root).metrics()["epoch"]) == [1, 2, 3]
    assert by_id(Store(root).trials()).loc["t", "final_val_loss"] == 0.7


def tune_trial(trial_id: str, config: dict[str, Any]) -> Any:
    """A Tune trial (a stub: no trainable behind it)."""
    from ray.tune.experiment import Trial

    return Trial("orch", config=config, stub=True, trial_id=trial_id)


def test_a_finished_trial_keeps_only_what_the_store_does_not_hold(tmp_path: Path, clock: Clock) -> None:
    root = tmp_path / "store"
    writer = new_writer(root, metric="val_loss")
    trial = tune_trial("t1", {"lr": 0.1, "hidden": 8})
    reports = FakeTrial("t1", trial.config, [1.0, 0.6, 0.8])
    writer.on_trial_start(iteration=0, trials=[trial], trial=trial)
    for epochs, final in ((2, False), (1, True)):
        result = reports.report(epochs, final=final)
        result.update(training_iteration=3 if final else 1, time_total_s=1.5, config=dict(trial.config))
        writer.on_trial_result(iteration=0, trials=[trial], trial=trial, result=result)
        trial.update_last_result(result)  # (Tune, after the callbacks)
    size = len("".join(trial.get_json_state()))
    trial.set_status("TERMINATED")
    writer.on_trial_complete(iteration=0, trials=[trial], trial=trial)

    last = trial.last_result
    assert set(last) <= {*callbacks.KEPT_RESULT, "val_loss"}
    assert last["val_loss"] == 0.8 and last["best"]["val_loss"] == 0.6 and last["final"]
    meta = trial.run_metadata
    assert set(meta.metric_analysis) == set(meta.metric_n_steps) == {"val_loss"}
    assert meta.metric_analysis["val_loss"]["min"] == 0.6
    assert len("".join(trial.get_json_state())) < size / 2  # what Tune writes into every snapshot
    # What is read back from it: its status, the best so far (a resumed sweep's progress line).
    assert trial_status(trial) == ("completed", "")
    progress = Progress(1, "val_loss", "min")
    progress.update([trial])
    assert progress.counts["completed"] == 1 and progress.best == (0.6, "t1")
    # The store has the rest.
    writer.flush()
    row = by_id(Store(root).trials()).loc["t1"]
    assert (row["final_val_loss"], row["best_val_loss"], row["epochs"]) == (0.8, 0.6, 3)
    assert row["test_loss"] == pytest.approx(0.85) and row["final_val_accuracy"] == 0.8 and row["node"] == "node-1"
    assert sorted(Store(root).metrics()["epoch"]) == [1, 2, 3]


def test_trials_are_named_by_a_function_that_tune_pickles_by_reference() -> None:
    # Tune pickles the name creators into every trial's state (a lambda: by value, about 1 KB each).
    import cloudpickle

    from orchestrator.tune.trial import trial_name

    assert trial_name(FakeTrial("abc123", {}, [])) == "abc123"
    data = cloudpickle.dumps(trial_name)
    assert cloudpickle.loads(data) is trial_name and len(data) < 200


# -- StoreWriter: when it writes ----------------------------------------------------------------


def files(root: Path, table: str) -> int:
    return len(Store(root).files(table))


def test_rows_are_batched_and_written_on_the_timer_at_checkpoints_and_at_the_end(
        tmp_path: Path, clock: Clock) -> None:
    root = tmp_path / "store"
    writer = new_writer(root)  # flushes every 10 s
    trials = [FakeTrial(f"t{i}", {"lr": 0.1, "hidden": 8}, [1.0, 0.9]) for i in range(4)]
    for t in trials:
        started(writer, t, trials)
    for t in trials[:2]:
        report(writer, t, trials, 2, final=True)
        complete(writer, t, trials)
    clock.t += 9.5
    writer.on_step_end(iteration=1, trials=trials)
    assert not root.exists()  # nothing written before the interval is up

    clock.t += 0.5
    writer.on_step_end(iteration=2, trials=trials)
    # One file per table for all the rows that waited, metrics first.
    assert (files(root, "trials"), files(root, "metrics")) == (1, 1)
    assert len(Store(root).trials()) == 2 and len(Store(root).metrics()) == 4
    assert writer.trials_written == 2

    writer.on_step_end(iteration=3, trials=trials)
    assert (files(root, "trials"), files(root, "metrics")) == (1, 1)  # nothing new: no file

    report(writer, trials[2], trials, 2, final=True)
    complete(writer, trials[2], trials)
    assert writer.get_state() is None  # Tune saves its state: the store catches up first
    assert (files(root, "trials"), files(root, "metrics")) == (2, 2)

    report(writer, trials[3], trials, 2, final=True)
    complete(writer, trials[3], trials)
    writer.on_experiment_end(trials=trials)
    assert (files(root, "trials"), files(root, "metrics")) == (3, 3)
    assert sorted(Store(root).trials()["trial_id"]) == ["t0", "t1", "t2", "t3"]
    assert writer.trials_written == 4


def test_many_metric_rows_are_written_without_waiting(tmp_path: Path, clock: Clock,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callbacks, "FLUSH_ROWS", 5)
    root = tmp_path / "store"
    writer = new_writer(root)
    t = FakeTrial("t0", {"lr": 0.1, "hidden": 8}, [1.0 - i / 10 for i in range(8)])
    started(writer, t, [t])
    report(writer, t, [t], 4)
    assert not root.exists()
    report(writer, t, [t], 2)  # 6 rows waiting: over the limit
    assert files(root, "metrics") == 1 and len(Store(root).metrics()) == 6
    assert files(root, "trials") == 0


def test_a_resumed_writer_never_writes_a_row_twice(tmp_path: Path, clock: Clock) -> None:
    root = tmp_path / "store"
    writer = new_writer(root)
    a = FakeTrial("ta", {"lr": 0.1, "hidden": 8}, [1.0, 0.9, 0.8, 0.7])
    b = FakeTrial("tb", {"lr": 0.2, "hidden": 8}, [1.0, 0.9, 0.8, 0.7])
    trials = [a, b]
    for t in trials:
        started(writer, t, trials)
    report(writer, a, trials, 4, final=True)
    complete(writer, a, trials)
    report(writer, b, trials, 2)
    writer.get_state()  # the experiment checkpoint; then the driver is killed

    again = new_writer(root)  # --resume: a new writer of the same sweep
    assert again.trials_written == 1
    a.epoch = b.epoch = 0  # Tune replays what it had, and b restarts from its epoch 0
    again.on_trial_result(iteration=0, trials=trials, trial=a, result=a.report(4, final=True))
    again.on_trial_complete(iteration=0, trials=trials, trial=a)
    report(again, b, trials, 4, final=True)
    complete(again, b, trials)
    again.on_experiment_end(trials=trials)

    rows = Store(root).trials()
    assert sorted(rows["trial_id"]) == ["ta", "tb"] and again.trials_written == 2
    raw = pd.concat([pd.read_parquet(f) for f in Store(root).files("metrics")])
    assert not raw.duplicated(["trial_id", "epoch"]).any()
    assert sorted(zip(raw["trial_id"], raw["epoch"], strict=True)) == [
        *[("ta", e) for e in range(1, 5)], *[("tb", e) for e in range(1, 5)]]
    # A resumed trial's start is unknown to the new writer: null, not a wrong time.
    assert pd.isna(by_id(rows).loc["tb", "started_at"])


def test_an_error_trial_is_one_row_with_the_errors_last_line(tmp_path: Path,
                                                              clock: Clock) -> None:
    root = tmp_path / "store"
    writer = new_writer(root)
    failed = FakeTrial("t_err", {"lr": 0.1, "hidden": 8}, [1.0, 0.9, 0.8])
    from_file = FakeTrial("t_file", {"lr": 0.2, "hidden": 8}, [1.0])
    early = FakeTrial("t_early", {"lr": 0.3, "hidden": 8}, [1.0])
    trials = [failed, from_file, early]
    for t in trials:
        started(writer, t, trials)
    report(writer, failed, trials, 2)
    failed.status = "ERROR"
    failed.error_msg = "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n"
    failed.num_failures = 2
    writer.on_trial_error(iteration=0, trials=trials, trial=failed)
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback (most recent call last):\n\nValueError: bad shape\n\n")
    from_file.status, from_file.error_file = "ERROR", str(error_file)
    writer.on_trial_error(iteration=0, trials=trials, trial=from_file)
    early.status = "ERROR"  # failed before its first report, with no message at all
    writer.on_trial_error(iteration=0, trials=trials, trial=early)
    writer.on_trial_error(iteration=0, trials=trials, trial=failed)  # reported twice: one row
    writer.on_experiment_end(trials=trials)

    got = by_id(Store(root).trials())
    assert sorted(got.index) == ["t_early", "t_err", "t_file"]
    assert set(got["status"]) == {"error"}
    assert got["stop_reason"].to_dict() == {"t_err": "RuntimeError: CUDA out of memory",
                                            "t_file": "ValueError: bad shape",
                                            "t_early": "trial raised an error"}
    assert got.loc["t_err", "retries"] == 2 and got.loc["t_err", "epochs"] == 2
    assert got["collapsed"].isna().all()  # not known for a trial that failed
    assert got.loc["t_early", "epochs"] == 0
    # Its epochs before the error are kept.
    metrics = Store(root).metrics()
    assert sorted(metrics[metrics["trial_id"] == "t_err"]["epoch"]) == [1, 2]


def test_at_the_end_running_trials_are_results_only_when_the_time_budget_ran_out(
        tmp_path: Path, clock: Clock) -> None:
    def sweep(root: Path, budget: float | None, elapsed: float) -> pd.DataFrame:
        writer = new_writer(root, time_budget_s=budget)
        done = FakeTrial("done", {"lr": 0.1, "hidden": 8}, [1.0, 0.9])
        running = FakeTrial("running", {"lr": 0.2, "hidden": 8}, [1.0, 0.9, 0.8])
        waiting = FakeTrial("waiting", {"lr": 0.3, "hidden": 8}, [1.0])
        trials = [done, running, waiting]
        for t in (done, running):
            started(writer, t, trials)
        report(writer, done, trials, 2, final=True)
        complete(writer, done, trials)
        report(writer, running, trials, 2)
        clock.t += elapsed
        writer.on_experiment_end(trials=trials)
        return by_id(Store(root).trials())

    budget = sweep(tmp_path / "budget", budget=60, elapsed=61)
    assert budget["status"].to_dict() == {"done": "completed", "running": "stopped_early"}
    assert budget.loc["running", "stop_reason"] == "time budget"
    assert budget.loc["running", "epochs"] == 2 and budget.loc["running", "best_val_loss"] == 0.9
    # Ctrl-C before the budget ran out: the running trial is left for --resume to run on.
    interrupted = sweep(tmp_path / "interrupted", budget=60, elapsed=30)
    assert list(interrupted.index) == ["done"]
    assert list(sweep(tmp_path / "no-budget", budget=None, elapsed=1e6).index) == ["done"]


def test_trial_status_of_a_finished_trial() -> None:
    t = FakeTrial("t", {}, [1.0, 1.0])
    assert trial_status(t) == ("stopped_early", "scheduler")  # no report at all
    t.report(1, final=True, status="diverged", reason="non-finite loss")
    assert trial_status(t) == ("diverged", "non-finite loss")
    t.status, t.error_msg = "ERROR", "x" * 600 + "\n"
    status, reason = trial_status(t)
    assert status == "error" and reason == "x" * 500


# -- SweepStatus: the status file and the metrics --------------------------------------------------


class Recorder:
    """A Ray metric: what was set (the last value per tags) and added."""

    def __init__(self) -> None:
        self.values: dict[tuple, float] = {}
        self.total = 0.0

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.values[tuple(sorted(tags.items()))] = value

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.total += value


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> dict[str, Recorder]:
    recorders = {name: Recorder() for name in ("trials", "planned", "results", "best")}
    monkeypatch.setattr(callbacks, "_ray_metrics", lambda: recorders)
    return recorders


def read_status(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_the_status_file_counts_trials_by_state_and_keeps_the_best(
        tmp_path: Path, clock: Clock, metrics: dict[str, Recorder]) -> None:
    path = tmp_path / "orch_status.json"
    status = SweepStatus(STUDY, SWEEP, 6, "val_loss", "min", str(path),
                         info={"store": "/data/store", "dashboard": "http://127.0.0.1:8265"},
                         interval_s=2.0)
    status.setup()
    good = FakeTrial("good", {}, [0.9, 0.3, 0.35], status="RUNNING")
    fair = FakeTrial("fair", {}, [0.8, 0.5], status="RUNNING")
    bad = FakeTrial("bad", {}, [math.nan])
    failed = FakeTrial("failed", {}, [1.0])
    pending = FakeTrial("pending", {}, [1.0])
    paused = FakeTrial("paused", {}, [0.7], status="PAUSED")
    trials = [good, fair, bad, failed, pending, paused]
    report(status, good, trials, 1)
    report(status, fair, trials, 1)
    report(status, paused, trials, 1)
    clock.t += 2.0
    status.on_step_end(iteration=1, trials=trials)
    first = read_status(path)
    assert first["state"] == "running" and first["trials"] == 6 and first["done"] == 0
    assert first["counts"] == {"pending": 3, "running": 2, "paused": 1, "completed": 0,
                               "stopped_early": 0, "diverged": 0, "error": 0}
    assert (first["best"], first["best_trial_id"]) == (0.7, "paused")
    assert first["results"] == 3

    report(status, good, trials, 2, final=True)  # its best (0.3) is the best so far
    complete(status, good, trials)
    fair.status = "TERMINATED"  # stopped by the scheduler after its first report
    report(status, bad, trials, 1, final=True, status="diverged")  # inf: never the best
    bad.status = "TERMINATED"
    failed.status, failed.error_msg = "ERROR", "RuntimeError: boom"
    clock.t += 1.0
    status.on_step_end(iteration=2, trials=trials)
    assert read_status(path)["results"] == 3  # not rewritten before the interval is up

    clock.t += 1.0
    status.on_step_end(iteration=3, trials=trials)
    now = read_status(path)
    assert now["counts"] == {"pending": 1, "running": 0, "paused": 1, "completed": 1,
                             "stopped_early": 1, "diverged": 1, "error": 1}
    assert now["done"] == 4 and now["results"] == 5
    assert (now["best"], now["best_trial_id"]) == (0.3, "good")
    assert now["study"] == STUDY and now["sweep_id"] == SWEEP
    assert (now["metric"], now["mode"]) == ("val_loss", "min")
    assert now["store"] == "/data/store" and now["dashboard"] == "http://127.0.0.1:8265"
    assert now["host"] == socket.gethostname() and now["pid"] == os.getpid()
    assert now["started_at"] == first["started_at"]
    assert not [p for p in tmp_path.iterdir() if p != path]  # no temporary file left

    status.on_experiment_end(trials=trials)
    assert read_status(path)["state"] == "ended"

    # The same numbers in Ray's metrics.
    tags = (("study", STUDY), ("sweep_id", SWEEP))
    assert metrics["planned"].values == {tags: 6}
    assert metrics["results"].total == 5
    assert metrics["best"].values == {(("metric", "val_loss"), *tags): 0.3}
    by_state = {dict(k)["state"]: v for k, v in metrics["trials"].values.items()}
    assert by_state == now["counts"]


def test_the_best_follows_the_mode(tmp_path: Path, clock: Clock, metrics) -> None:
    path = tmp_path / "orch_status.json"
    status = SweepStatus(STUDY, SWEEP, 2, "val_accuracy", "max", str(path))
    status.setup()
    a, b = FakeTrial("a", {}, [0.8, 0.2], "RUNNING"), FakeTrial("b", {}, [0.6], "RUNNING")
    report(status, a, [a, b], 2)  # val_accuracy 0.8 then 0.95: its best is 0.95
    report(status, b, [a, b], 1)  # 0.85
    status.on_experiment_end(trials=[a, b])
    assert (read_status(path)["best"], read_status(path)["best_trial_id"]) == (0.95, "a")


def test_a_status_file_that_cannot_be_written_never_stops_the_sweep(
        tmp_path: Path, clock: Clock, metrics) -> None:
    status = SweepStatus(STUDY, SWEEP, 1, "val_loss", "min", str(tmp_path / "gone" / "status.json"))
    status.setup()
    status.on_experiment_end(trials=[FakeTrial("t", {}, [1.0])])
    assert not (tmp_path / "gone").exists()


# -- Progress: the line -------------------------------------------------------------------------


def test_the_progress_line_counts_from_tunes_trials(clock: Clock,
                                                    capsys: pytest.CaptureFixture) -> None:
    progress = Progress(10, "val_loss", "min", interval_s=5.0)
    progress.setup()
    done = FakeTrial("done", {}, [0.5, 0.25], status="RUNNING")
    early = FakeTrial("early", {}, [0.9], status="RUNNING")
    diverged = FakeTrial("nan", {}, [math.nan], status="RUNNING")
    failed = FakeTrial("failed", {}, [1.0], status="RUNNING")
    running = FakeTrial("running", {}, [0.6, 0.4], status="RUNNING")
    trials = [done, early, diverged, failed, running]
    report(progress, done, trials, 2, final=True)
    done.status = "TERMINATED"
    report(progress, early, trials, 1)
    early.status = "TERMINATED"
    report(progress, diverged, trials, 1, final=True, status="diverged")
    diverged.status = "TERMINATED"
    failed.status, failed.error_msg = "ERROR", "boom"
    report(progress, running, trials, 1)
    clock.t += 65
    progress.on_step_end(iteration=1, trials=trials)
    line = capsys.readouterr().out
    assert line == ("[01:05] trials 4/10 done | 1 running | 1 stopped early | 1 diverged | 1 failed"
                    " | best val_loss 0.25 (done)\n")
    m = jobs.PROGRESS.search(line)  # as orch status reads it from a job's log
    assert m and (m["done"], m["total"], m["running"], m["best"]) == ("4", "10", "1", "0.25")

    clock.t += 4.5
    progress.on_step_end(iteration=2, trials=trials)
    assert capsys.readouterr().out == ""  # not before the interval is up
    clock.t += 0.5
    progress.on_step_end(iteration=3, trials=trials)
    assert capsys.readouterr().out.startswith("[01:10] trials 4/10 done")


def test_the_progress_line_reads_tunes_trials_only_when_it_shows(clock: Clock,
                                                                 capsys: pytest.CaptureFixture) -> None:
    # Tune's list holds every trial of the sweep, and its steps come many a second.
    class Unread(list):
        def __iter__(self):
            raise AssertionError("the trials were read between two lines")

    progress = Progress(10, "val_loss", "min", interval_s=5.0)
    progress.setup()
    trial = FakeTrial("t", {}, [0.5], status="RUNNING")
    progress.on_step_end(iteration=1, trials=[trial])
    assert "1 running" in capsys.readouterr().out
    for i in range(4):
        clock.t += 1
        progress.on_step_end(iteration=2 + i, trials=Unread([trial]))
    assert capsys.readouterr().out == ""
    trial.status = "TERMINATED"
    trial.report(1, final=True)
    clock.t += 1
    progress.on_step_end(iteration=6, trials=[trial])
    assert "trials 1/10 done | 0 running" in capsys.readouterr().out


def test_a_resumed_sweeps_progress_counts_the_trials_restored_finished(clock: Clock) -> None:
    # Restored trials never complete again: they are counted (and their best taken) from their
    # status and last result.
    progress = Progress(3, "val_loss", "min")
    progress.setup()
    restored = FakeTrial("restored", {}, [0.5, 0.2])
    restored.report(2, final=True)
    restored.status = "TERMINATED"
    pending = FakeTrial("new", {}, [1.0])
    progress.on_experiment_end(trials=[restored, pending])
    assert progress.counts == {"completed": 1, "stopped_early": 0, "diverged": 0, "error": 0}
    assert progress.running == 0 and progress.best == (0.2, "restored")
    assert "trials 1/3 done | 0 running | 0 stopped early | best val_loss 0.2 (restored)" in (
        progress.line())
