"""``orch sweep --resume`` writes where the sweep's store is now, and keeps orch's live files.

A coarse-to-fine sweep (two stages) is killed in its first stage (SIGKILL of the driver), then
resumed in place or after its store was moved: the resumed run's rows go into the store it was
given (never the old path), each trial once, and the experiment directory's status file and
stages file end as this run left them (Tune's copies from before the kill are not uploaded over
them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from orchestrator.jobs import STATUS_FILE
from orchestrator.searchers import STAGES_FILE
from tests.conftest import CONFIG, ORCH, ROOT, SMALL, descendants, kill_all, orch

# One trial at a time: the driver is killed while the first stage still has trials to run.
ARGS = [*SMALL, "scheduler.name=fifo", "scheduler.max_epochs=8", "search.num_samples=6",
        "search.stages=2", "search.max_concurrent=1", "train.checkpoint_every=2",
        "model.hidden=32",
        # Every checkpoint kept: a kill between the deletion of a trial's previous checkpoint and
        # the save naming the next would fail that trial's restore (a limit of Tune's retention).
        "train.keep_checkpoints=null"]
N = 6


def _rows(store: Path, table: str) -> pd.DataFrame:
    """A table exactly as its files hold it (no de-duplication)."""
    files = sorted((store / table).glob("study=*/*.parquet"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def _kill_in_first_stage(store: Path, env: dict[str, str]) -> str:
    """Start the sweep, SIGKILL its driver once a first-stage trial is in the store and Tune has
    saved its state; returns the sweep id."""
    proc = subprocess.Popen([ORCH, "sweep", str(CONFIG), *ARGS, "--store", str(store)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            # (rows written at once: a finished trial is seen at once)
                            env={**os.environ, "ORCH_NO_REPORT": "1", "ORCH_STORE_FLUSH_S": "0",
                                 **env})
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no finished trial and saved state to kill at"
            done = len(_rows(store, "trials")) if (store / "trials").exists() else 0
            if done >= 1 and list((store / "_ray").glob("*/experiment_state-*.json")):
                break
            time.sleep(0.05)
        tree = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies without any chance to clean up
        proc.wait(30)
    finally:
        kill_all(descendants(proc.pid) + tree)  # only the Ray processes this sweep started
        if proc.poll() is None:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()
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
    before = _rows(old, "trials")
    started = set(_rows(old, "metrics")["trial_id"])
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

    trials = _rows(store, "trials")
    assert len(trials) == N and trials["trial_id"].is_unique  # every trial, once
    assert set(before["trial_id"]) <= set(trials["trial_id"])
    errors = trials[trials["status"] == "error"]
    assert errors.empty, errors["stop_reason"].tolist()  # (trials created after the resume too)
    assert sorted(trials["stage"].value_counts().items()) == [(1, N // 2), (2, N // 2)]
    metrics = _rows(store, "metrics")
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
    (row,) = _rows(store, "sweeps").to_dict("records")
    assert row["sweep_id"] == sweep_id and len(json.loads(row["stages"])) == 2
    status = json.loads((exp / STATUS_FILE).read_text())
    assert status["state"] == "ended" and status["done"] == N
    assert status["store"] == str(store.resolve())
