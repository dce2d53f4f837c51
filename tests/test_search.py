"""Searchers end to end: coarse-to-fine stages and TPE with conditional knobs, through ``orch sweep``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import CONFIG, SMALL, orch, store_rows


@pytest.mark.slow
def test_two_stages_land_in_the_store_and_in_orch_results(store: Path) -> None:
    p = orch("sweep", CONFIG, *SMALL, "search.num_samples=10", "search.stages=2", "--store", store)
    assert p.returncode == 0, p.stderr
    assert "Stage 1 of 2: 5 trials, full space: lr 0.0001..0.1 (log)" in p.stdout
    assert "Stage 2 of 2: 5 trials, zoomed on the top 3 trials: lr " in p.stdout

    trials = store_rows(store, "trials")
    assert sorted(trials["stage"].value_counts().items()) == [(1, 5), (2, 5)]
    sweep = store_rows(store, "sweeps").iloc[0]
    stages = json.loads(sweep["stages"])
    assert [s["stage"] for s in stages] == [1, 2]
    full, zoomed = stages[0]["ranges"], stages[1]["ranges"]
    assert full["lr"] == [1e-4, 1e-1]
    assert full["lr"][0] <= zoomed["lr"][0] < zoomed["lr"][1] <= full["lr"][1]
    assert zoomed["lr"][1] / zoomed["lr"][0] < 1e3  # narrower than the three decades of stage 1
    # Every stage-2 trial was sampled inside the zoomed ranges.
    second = trials[trials["stage"] == 2]
    for knob in ("lr", "dropout", "hidden", "batch_size"):
        lo, hi = zoomed[knob]
        assert second[f"config.{knob}"].between(lo * (1 - 1e-9), hi * (1 + 1e-9)).all(), knob

    r = orch("results", "--study", "test-iris", "--store", store)
    assert r.returncode == 0, r.stderr
    assert f"Stages of sweep {sweep['sweep_id']}" in r.stdout
    assert "  1: 5 trials: lr 0.0001..0.1" in r.stdout and "  2: 5 trials: lr " in r.stdout


@pytest.mark.slow
def test_tpe_with_conditional_knobs(store: Path) -> None:
    p = orch("sweep", CONFIG, *SMALL, "search.num_samples=8", "search.algorithm=tpe",
             "search_space=search_spaces/mlp_any_optimizer.yaml",
             "search.points_to_evaluate=[{optimizer: sgd, momentum: 0.9, lr: 0.05}]", "--store", store)
    assert p.returncode == 0, p.stderr
    assert "8 trials (tpe search)" in p.stdout
    trials = store_rows(store, "trials")
    assert len(trials) == 8
    first = trials[(trials["config.optimizer"] == "sgd") & (trials["config.lr"] == 0.05)]
    assert len(first) == 1 and first["config.momentum"].iloc[0] == 0.9
    for _, t in trials.iterrows():  # a trial carries only its optimizer's knobs
        assert pd.notna(t["config.momentum"]) == (t["config.optimizer"] == "sgd")
        assert pd.notna(t["config.beta1"]) == (t["config.optimizer"] in ("adam", "adamw"))
        assert t["config.batch_size"] in (16, 32, 64, 128, 256)
    assert store_rows(store, "sweeps")["searcher"].tolist() == ["tpe"]
