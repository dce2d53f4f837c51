"""``orch sweep --resume`` writes where the sweep's store is now, and keeps orch's live files.

A coarse-to-fine sweep (two stages) is killed in its first stage (SIGKILL of the driver), then
resumed in place or after its store was moved: the resumed run's rows go into the store it was
given (never the old path), each trial once, and the experiment directory's status file and
stages file end as this run left them (Tune's copies from before the kill are not uploaded over
them).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from orchestrator.tune.files import STAGES_FILE, STATUS_FILE
from tests.conftest import (
    CONFIG,
    SMALL,
    finished_trials,
    kill_driver_at,
    orch,
    start_sweep,
    store_rows,
)

# One trial at a time: the driver is killed while the first stage still has trials to run.
ARGS = [*SMALL, "scheduler.name=fifo", "scheduler.max_epochs=8", "search.num_samples=6",
        "search.stages=2", "search.max_concurrent=1", "train.checkpoint_every=2",
        "model.hidden=32",
        # Every checkpoint kept: a kill between the deletion of a trial's previous checkpoint and
        # the save naming the next would fail that trial's restore (a limit of Tune's retention).
        "train.keep_checkpoints=null"]
N = 6


def _kill_in_first_stage(store: Path, env: dict[str, str]) -> str:
    """Start the sweep, SIGKILL its driver in the first stage once a trial is in the store and
    Tune has saved its state; returns the sweep id."""

    def first_stage_saved() -> bool:
        saved = list((store / "_ray").glob("*/experiment_state-*.json"))
        stages = [json.loads(f.read_text()) for f in (store / "_ray").glob(f"*/{STAGES_FILE}")]
        return 1 <= finished_trials(store) < N and bool(saved) and [len(s) for s in stages] == [1]

    # (rows written at once: a finished trial is seen at once)
    proc = start_sweep([*ARGS, "--store", str(store)], env={"ORCH_STORE_FLUSH_S": "0", **env})
    kill_driver_at(proc, first_stage_saved)
    (sweep_id,) = [d.name for d in (store / "_ray").iterdir()]
    stages = json.loads((store / "_ray" / sweep_id / STAGES_FILE).read_text())
    assert len(stages) == 1, "killed after the second stage started: nothing left to show"
    return sweep_id


@pytest.mark.slow
@pytest.mark.parametrize("moved", [True, False], ids=["moved-store", "in-place"])
def test_a_resumed_sweep_writes_into_its_store_now_and_keeps_orchs_files(tmp_path: Path,
                                                                         moved: bool) -> None:
    env = {"ORCH_STATE_KEY_FILE": str(tmp_path / "keys" / "state.key"), "ORCH_STATE_KEY": ""}
    old = tmp_path / "results"
    sweep_id = _kill_in_first_stage(old, env)
    before = store_rows(old, "trials")
    started = set(store_rows(old, "metrics")["trial_id"])
    assert 1 <= len(before) < N
    store = tmp_path / "results2" if moved else old
    if moved:
        shutil.move(old, store)

    p = orch("sweep", CONFIG, *ARGS, "--resume", "--store", store, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"Resuming sweep {sweep_id}" in p.stdout
    assert "Stage 2 of 2" in p.stdout
    if moved:
        assert not old.exists()  # nothing of the resumed run went to the store's old path

    trials = store_rows(store, "trials")
    assert len(trials) == N and trials["trial_id"].is_unique  # every trial, once
    assert set(before["trial_id"]) <= set(trials["trial_id"])
    errors = trials[trials["status"] == "error"]
    assert errors.empty, errors["stop_reason"].tolist()  # (trials created after the resume too)
    assert sorted(trials["stage"].value_counts().items()) == [(1, N // 2), (2, N // 2)]
    metrics = store_rows(store, "metrics")
    assert not metrics.duplicated(["trial_id", "epoch"]).any()
    assert set(trials["trial_id"]) <= set(metrics["trial_id"])
    # (A trial started after Tune's last save is lost with the driver, its first epochs stay.)
    assert set(metrics["trial_id"]) - set(trials["trial_id"]) <= started
    progress = re.findall(r"trials (\d+)/(\d+) done \| (\d+) running", p.stdout)
    assert progress and progress[-1] == (str(N), str(N), "0"), p.stdout

    # orch's own files in the experiment directory: as the resumed run wrote them last.
    exp = store / "_ray" / sweep_id
    stages = json.loads((exp / STAGES_FILE).read_text())
    assert [s["stage"] for s in stages] == [1, 2]
    (row,) = store_rows(store, "sweeps").to_dict("records")
    assert row["sweep_id"] == sweep_id and len(json.loads(row["stages"])) == 2
    status = json.loads((exp / STATUS_FILE).read_text())
    assert status["state"] == "ended" and status["done"] == N
    assert status["store"] == str(store.resolve())
