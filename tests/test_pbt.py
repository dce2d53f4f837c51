"""Population-based training: explore on each knob's scale, exploit through kept checkpoints, and the
schedule of each trial read back from the store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from orchestrator.space import space as spaces
from orchestrator.store.tables import Store
from orchestrator.tune import plan
from orchestrator.tune.pbt import mutable_knobs, perturb
from tests.conftest import ROOT, SMALL, orch, store_rows

PBT = ROOT / "conf" / "tabular_pbt.yaml"
# Iris, 4 trials, 8 epochs, an exploit step every 2 epochs.
SMALL_PBT = [*SMALL, "study=test-pbt", "scheduler.max_epochs=8", "scheduler.perturbation_interval=2",
             "search.num_samples=4"]


def knob(name: str, spec: dict) -> spaces.Knob:
    return spaces.parse_knob(name, spec)


@pytest.mark.parametrize("factor", [1.2, 0.8])
def test_perturb_moves_each_knob_on_its_own_scale(factor) -> None:
    rng = np.random.default_rng(0)
    lr = knob("lr", {"loguniform": [1e-5, 1.0]})
    assert perturb(lr, 0.01, factor, rng) == pytest.approx(0.01 * factor)  # multiplied
    beta = knob("beta1", {"log1m": [0.5, 0.9999]})
    assert 1 - perturb(beta, 0.99, factor, rng) == pytest.approx(0.01 * factor)  # 1 - beta multiplied
    drop = knob("dropout", {"uniform": [0.0, 0.5]})
    assert perturb(drop, 0.25, factor, rng) == pytest.approx(0.25 + (factor - 1) * 0.5)  # a share of the range
    bs = knob("batch_size", {"pow2": [16, 256]})
    assert perturb(bs, 64, factor, rng) == (128 if factor > 1 else 32)  # the next power of two
    hidden = knob("hidden", {"int": [8, 512], "log": True})
    moved = perturb(hidden, 100, factor, rng)
    assert isinstance(moved, int) and moved == round(100 * factor)
    small = knob("layers", {"int": [1, 4]})
    assert perturb(small, 2, factor, rng) == (3 if factor > 1 else 1)  # an int always moves
    opt = knob("optimizer", {"choice": ["sgd", "adam", "adamw"]})
    assert perturb(opt, "adam", factor, rng) == ("adamw" if factor > 1 else "sgd")  # a neighbour


def test_perturb_stays_inside_the_range() -> None:
    rng = np.random.default_rng(0)
    lr = knob("lr", {"loguniform": [1e-4, 0.1]})
    assert perturb(lr, 0.1, 1.2, rng) == 0.1 and perturb(lr, 1e-4, 0.8, rng) == 1e-4
    bs = knob("batch_size", {"pow2": [16, 256]})
    assert perturb(bs, 256, 1.2, rng) == 256 and perturb(bs, 16, 0.8, rng) == 16


def test_structural_knobs_are_fixed_per_trial() -> None:
    cfg = plan.load(PBT)
    space = spaces.compile_space(cfg)
    assert set(mutable_knobs(space)) == {"lr", "batch_size", "dropout", "beta1", "beta2", "eps"}
    assert "hidden" in space.searched and "layers" in space.searched


@pytest.mark.parametrize("overrides, words", [
    (["search.algorithm=tpe"], ["search.algorithm", "use random or grid"]),
    (["scheduler.perturbation_interval=30"], ["scheduler.perturbation_interval", "below scheduler.max_epochs"]),
    (["search.num_samples=1"], ["search.num_samples", "at least 2"]),
    (["scheduler.perturbation_factors=[1.0]"], ["scheduler.perturbation_factors"]),
    (["scheduler.quantile_fraction=0.7"], ["scheduler.quantile_fraction"]),
])
def test_bad_pbt_settings_are_one_line_errors(overrides, words) -> None:
    r = orch("check", PBT, "--config-only", *overrides)
    assert r.returncode == 2, r.stdout + r.stderr
    assert all(w in r.stderr for w in words) and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def pbt_sweep(tmp_path_factory) -> tuple[Path, str]:
    store = tmp_path_factory.mktemp("pbt") / "store"
    p = orch("sweep", PBT, *SMALL_PBT, "scheduler.resample_probability=0", "--store", store)
    assert p.returncode == 0, p.stderr
    return store, p.stdout


def test_pbt_sweep_babysits_a_small_population(pbt_sweep) -> None:
    store, out = pbt_sweep
    assert "Babysitting a population of 4 with pbt" in out
    assert "hidden, layers fixed per trial" in out
    trials = store_rows(store, "trials")
    assert len(trials) == 4 and set(trials["status"]) == {"completed"}
    assert (trials["epochs"] == 8).all()


def test_an_exploited_trial_resumes_from_the_donors_weights_with_the_new_lr(pbt_sweep) -> None:
    store, _ = pbt_sweep
    exploits = Store(store).read("exploits")
    metrics = Store(store).metrics()
    assert len(exploits) >= 1
    checked = perturbed = 0
    for _, e in exploits.iterrows():
        new, old = json.loads(e["new_config"]), json.loads(e["old_config"])
        after = metrics[(metrics["trial_id"] == e["trial_id"]) & (metrics["generation"] == e["generation"])]
        first = after.sort_values("epoch").iloc[0]
        # It continues where the donor's checkpoint was.
        assert first["epoch"] == e["donor_epoch"] + 1
        # Its weights are the donor's: their validation loss before any training is the donor's at
        # that epoch, exactly (same weights, same data) ...
        donor = metrics[(metrics["trial_id"] == e["donor_trial_id"]) & (metrics["epoch"] == e["donor_epoch"])]
        assert np.isclose(donor["val_loss"].to_numpy(), first["resumed_val_loss"], rtol=1e-6, atol=1e-9).any()
        # ... and not its own (when its own differed).
        own = metrics[(metrics["trial_id"] == e["trial_id"]) & (metrics["generation"] == e["generation"] - 1)
                      & (metrics["epoch"] == e["epoch"])]
        if len(own) and not np.isclose(own["val_loss"], donor["val_loss"]).any():
            assert not np.isclose(own["val_loss"].iloc[0], first["resumed_val_loss"])
            checked += 1
        # The optimizer trains with the perturbed learning rate (constant schedule: lr itself).
        assert first["lr"] == pytest.approx(new["lr"])
        # The exploits table names lr among the changed knobs exactly when it changed: a trial that
        # copies, perturbed, a donor whose config it already copied once can land on its own lr.
        lr_changed = new["lr"] != pytest.approx(old["lr"])
        assert ("lr" in json.loads(e["changed"])) == lr_changed
        perturbed += lr_changed
        # Width and depth came with the weights, unperturbed: the donor's.
        donor_cfgs = [json.loads(c) for c in exploits[exploits["trial_id"] == e["donor_trial_id"]]["new_config"]]
        trials = store_rows(store, "trials").set_index("trial_id")
        donor_shapes = {(c["hidden"], c["layers"]) for c in donor_cfgs}
        donor_shapes.add((int(trials.loc[e["donor_trial_id"], "config.hidden"]),
                          int(trials.loc[e["donor_trial_id"], "config.layers"])))
        assert (new["hidden"], new["layers"]) in donor_shapes
    assert checked >= 1 and perturbed >= 1


def test_schedule_reads_back_in_results_and_best(pbt_sweep) -> None:
    store, _ = pbt_sweep
    exploits = store_rows(store, "exploits")
    trial = exploits.sort_values("generation").iloc[-1]["trial_id"]
    r = orch("results", "--store", store, "--schedule", trial)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"Schedule of trial {trial}") and "lr" in lines[1]
    segments = lines[2:]
    assert len(segments) >= 2 and segments[0].split()[0].startswith("1-") and segments[-1].split()[0].endswith("-8")
    assert segments[-1].split()[1] == trial

    b = orch("best", "test-pbt", "--store", store)
    assert b.returncode == 0, b.stderr
    fragment = yaml.safe_load(b.stdout)
    sched = fragment["schedule"]
    assert sched[0]["epochs"][0] == 1 and sched[-1]["epochs"][1] == 8
    assert all("lr" in s for s in sched)
    firsts = [s["epochs"][0] for s in sched]
    lasts = [s["epochs"][1] for s in sched]
    assert all(a == b + 1 for a, b in zip(firsts[1:], lasts[:-1], strict=True))  # contiguous
    assert fragment["train"]["lr"] == pytest.approx(sched[-1]["lr"])

    bad = orch("results", "--store", store, "--schedule", "nope")
    assert bad.returncode == 2 and "no trial 'nope'" in bad.stderr


def _retention_sweep(store: Path, env: dict | None = None):
    return orch("sweep", PBT, *SMALL_PBT, "search.num_samples=6", "scheduler.perturbation_interval=1",
                "scheduler.max_epochs=8", "train.keep_checkpoints=1", "--store", store, env=env)


@pytest.mark.slow
def test_retention_that_would_delete_an_exploited_checkpoint_is_harmless(tmp_path: Path) -> None:
    """Keep one checkpoint per trial and exploit every epoch: a donor's checkpoint is deleted by its
    next one, often before the trial that copies it restores. orch copies it first."""
    store = tmp_path / "store"
    p = _retention_sweep(store)
    assert p.returncode == 0, p.stderr
    trials = store_rows(store, "trials")
    assert len(trials) == 6 and set(trials["status"]) == {"completed"}, trials[["status", "stop_reason"]]
    assert len(store_rows(store, "exploits")) >= 3
    assert not list((store / "_ray").glob("*/pbt/*"))  # the copies are removed at the end


@pytest.mark.slow
def test_without_the_copies_the_same_sweep_loses_checkpoints(tmp_path: Path) -> None:
    """The negative control: exploiting through a reference to the donor's checkpoint (Tune's own
    behaviour) under the same retention fails trials with a missing checkpoint."""
    store = tmp_path / "store"
    p = _retention_sweep(store, env={"ORCH_PBT_SHARE_CHECKPOINTS": "1"})
    trials = store_rows(store, "trials")
    errors = trials[trials["status"] == "error"]
    assert len(errors) >= 1, trials[["status", "stop_reason"]]
    assert errors["stop_reason"].str.contains("does not exist on storage").any()
    assert p.returncode in (0, 1)


@pytest.mark.slow
def test_pb2_runs_with_a_small_population(tmp_path: Path) -> None:
    store = tmp_path / "store"
    p = orch("sweep", PBT, *SMALL_PBT, "scheduler.name=pb2", "--store", store)
    assert p.returncode == 0, p.stderr
    assert "Babysitting a population of 4 with pb2" in p.stdout
    trials = store_rows(store, "trials")
    # PB2's proposals are its own (a GP's upper confidence bound, not seeded): one at the edge of the
    # space (lr 0.1 with beta1 0.999) can diverge, as it should; no trial may fail.
    assert set(trials["status"]) <= {"completed", "diverged"} and (trials["status"] == "completed").any(), trials
    e = store_rows(store, "exploits") if (store / "exploits").exists() else pd.DataFrame()
    for _, row in e.iterrows():  # PB2 proposes inside each knob's range
        new = json.loads(row["new_config"])
        assert 1e-4 <= new["lr"] <= 1e-1 and 0 <= new["dropout"] <= 0.5
    assert math.isfinite(trials["best_val_loss"].min())
