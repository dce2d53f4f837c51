"""`orch results` and `orch best` on a small store written by hand through Store.append."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
import yaml

from orchestrator.config import load as config
from orchestrator.config import schema
from orchestrator.store import queries
from orchestrator.store.tables import Store
from orchestrator.tune import plan
from tests.conftest import CONFIG, assert_user_error, cli

STUDY = "tabular-digits"
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)

# sweep id -> (ended_at offset in days, best trial, best value). The best sweep of the study is
# the oldest one, so that "best" cannot be confused with "newest".
SWEEPS = {
    "s-old": (0, "t2", 0.11),
    "s-mid": (1, "t0", 0.30),
    "s-new": (2, "t1", 0.20),
}
OTHER_STUDY = "other-study"


def trials_for(sweep_id: str, best_trial: str, best_value: float) -> list[dict]:
    rows = []
    for j in range(3):
        tid = f"t{j}"
        is_best = tid == best_trial
        rows.append({
            "sweep_id": sweep_id,
            "trial_id": tid,
            "status": "completed" if is_best else "stopped_early",
            "config.lr": 0.001 * (j + 1) + (0.0001 if sweep_id == "s-old" else 0.0),
            "config.beta1": 0.9,
            "config.batch_size": 32 * (j + 1),
            "config.hidden": 64 * (j + 1),
            "config.layers": 2,
            "config.activation": "relu",
            "config.dropout": 0.1 * j,
            # None in some trials: the column reads back as floats.
            "config.patience": 5 if is_best else None,
            "config.grad_clip": 1.0,
            "best_val_loss": best_value if is_best else best_value + 0.1 * (j + 1),
            "final_val_loss": (best_value if is_best else best_value + 0.1 * (j + 1)) + 0.01,
            "epochs": 10 + j,
        })
    return rows


@pytest.fixture(scope="module")
def cfg() -> config.SweepConfig:
    return plan.load(CONFIG)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory, cfg: config.SweepConfig) -> Path:
    root = tmp_path_factory.mktemp("results") / "store"
    s = Store(root)
    types = schema.hyperparameter_types(cfg)
    text = config.to_yaml(cfg)
    # Written out of time order, as resumed or concurrent sweeps may be.
    for sid in ("s-mid", "s-new", "s-old"):
        days, best, value = SWEEPS[sid]
        s.append("sweeps", STUDY, [{
            "sweep_id": sid, "reason": "manual", "parent_sweep_id": None, "scheduler": "asha",
            "searcher": "random", "config_yaml": text,
            "started_at": T0 + timedelta(days=days), "ended_at": T0 + timedelta(days=days, hours=1),
            "num_trials": 3, "best_trial_id": best, "metric": "val_loss", "mode": "min",
            "best_value": value, "data_fingerprint": "0123456789abcdef", "orch_version": "0.1.0",
        }], sid)
        s.append("trials", STUDY, trials_for(sid, best, value), sid, types=types)
    s.append("sweeps", OTHER_STUDY, [{
        "sweep_id": "o-1", "scheduler": "fifo", "searcher": "random", "config_yaml": text,
        "started_at": T0 + timedelta(days=1, hours=5), "ended_at": T0 + timedelta(days=1, hours=6),
        "best_trial_id": "t0", "metric": "val_loss", "mode": "min", "best_value": 0.5,
    }], "o-1")
    s.append("trials", OTHER_STUDY, trials_for("o-1", "t0", 0.5), "o-1", types=types)
    return root


NEWEST_FIRST = ["s-new", "o-1", "s-mid", "s-old"]


def test_results_table_newest_first(store_dir: Path) -> None:
    run = cli("results", "--store", store_dir)
    assert run.code == 0, run.stderr + run.detail
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["study", "sweep_id", "ended_at", "trials", "scheduler", "searcher", "metric",
                                "best_value", "best_trial_id", "best_config"]
    assert [line.split()[1] for line in lines[1:]] == NEWEST_FIRST
    new = lines[1]
    assert new.split()[:4] == [STUDY, "s-new", "2024-03-03", "10:00"]
    assert "val_loss (min)" in new and " 0.2 " in new and " t1 " in new
    # The knobs that differ between the sweep's trials, at the best trial's values.
    assert "lr=0.002 batch_size=64 hidden=128 dropout=0.1" in new
    assert "beta1=" not in new and "activation=" not in new  # the same in every trial


def test_results_csv(store_dir: Path) -> None:
    run = cli("results", "--store", store_dir, "--format", "csv")
    assert run.code == 0, run.stderr + run.detail
    df = pd.read_csv(io.StringIO(run.stdout))
    assert list(df.columns) == queries.SWEEP_COLUMNS
    assert df["sweep_id"].tolist() == NEWEST_FIRST
    assert df["study"].tolist() == [STUDY, OTHER_STUDY, STUDY, STUDY]
    assert df["trials"].tolist() == [3, 3, 3, 3]
    assert df["best_value"].tolist() == [0.20, 0.5, 0.30, 0.11]
    assert df["best_trial_id"].tolist() == ["t1", "t0", "t0", "t2"]
    ended = pd.to_datetime(df["ended_at"], utc=True)
    assert ended.is_monotonic_decreasing
    assert ended.iloc[0] == pd.Timestamp(T0 + timedelta(days=2, hours=1))


def test_results_json(store_dir: Path) -> None:
    run = cli("results", "--store", store_dir, "--format", "json")
    assert run.code == 0, run.stderr + run.detail
    records = json.loads(run.stdout)
    assert [r["sweep_id"] for r in records] == NEWEST_FIRST
    first = records[0]
    assert first["study"] == STUDY and first["best_trial_id"] == "t1" and first["best_value"] == 0.2
    assert first["metric"] == "val_loss (min)" and first["scheduler"] == "asha"
    assert first["ended_at"].startswith("2024-03-03T10:00:00")


def test_results_one_study(store_dir: Path) -> None:
    run = cli("results", "--store", store_dir, "--study", STUDY, "--format", "json")
    assert run.code == 0, run.stderr + run.detail
    assert [r["sweep_id"] for r in json.loads(run.stdout)] == ["s-new", "s-mid", "s-old"]


def test_results_unknown_study(store_dir: Path) -> None:
    line = assert_user_error(cli("results", "--store", store_dir, "--study", "nope"), "--study", "'nope'")
    assert STUDY in line and OTHER_STUDY in line  # it lists the studies there are


def test_results_no_store(tmp_path: Path) -> None:
    assert_user_error(cli("results", "--store", tmp_path / "missing"), "--store", str(tmp_path / "missing"))


def test_results_empty_store(tmp_path: Path) -> None:
    run = cli("results", "--store", tmp_path)
    assert run.code == 0 and run.stdout.startswith("No sweeps yet")
    run = cli("results", "--store", tmp_path, "--format", "json")
    assert run.code == 0 and json.loads(run.stdout) == []


def test_best_prints_loadable_yaml(store_dir: Path, tmp_path: Path) -> None:
    run = cli("best", STUDY, "--store", store_dir)
    assert run.code == 0, run.stderr + run.detail
    assert run.stdout.startswith(f"# best of study {STUDY}: sweep s-old, trial t2, val_loss = 0.11 (min)")
    fragment = yaml.safe_load(run.stdout)
    assert set(fragment) == {"model", "train"}
    # The best trial of the best sweep (the oldest one here), with the types the config wants.
    assert fragment["model"] == {"name": "mlp", "hidden": 192, "layers": 2, "dropout": 0.2, "activation": "relu"}
    assert fragment["train"] == {"lr": pytest.approx(0.0031), "beta1": 0.9, "batch_size": 96,
                                 "patience": 5, "grad_clip": 1.0}
    assert isinstance(fragment["train"]["patience"], int)
    assert isinstance(fragment["train"]["batch_size"], int)

    # It loads back as a config fragment on top of the sweep's config.
    (tmp_path / "best.yaml").write_text(run.stdout)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({"base": [str(CONFIG), "best.yaml"], "study": "retrain"}))
    cfg = plan.load(tmp_path / "train.yaml")
    assert cfg.study == "retrain"
    assert cfg.train.lr == pytest.approx(0.0031) and cfg.train.batch_size == 96 and cfg.train.patience == 5
    assert cfg.model["hidden"] == 192 and cfg.model["dropout"] == 0.2
    assert cfg.scheduler.name == "asha"  # the rest comes from the base config


def test_best_of_one_sweep(store_dir: Path) -> None:
    run = cli("best", STUDY, "--store", store_dir, "--sweep", "s-new")
    assert run.code == 0, run.stderr + run.detail
    assert "sweep s-new, trial t1" in run.stdout.splitlines()[0]
    fragment = yaml.safe_load(run.stdout)
    assert fragment["model"]["hidden"] == 128 and fragment["train"]["lr"] == pytest.approx(0.002)


def test_best_unknown_study(store_dir: Path) -> None:
    assert_user_error(cli("best", "nope", "--store", store_dir), "'nope'")


def test_best_unknown_sweep(store_dir: Path) -> None:
    assert_user_error(cli("best", STUDY, "--store", store_dir, "--sweep", "s-zzz"), "--sweep", "'s-zzz'")


def test_config_cells_round_trip_and_missing_cells_of_any_width_are_left_out() -> None:
    import numpy as np

    from orchestrator.store import trials as trial_rules

    hp = {"lr": 0.01, "widths": [64, 32], "optimizer": "adam", "nesterov": True}
    cells = trial_rules.encode_config(hp)
    assert cells["config.widths"] == "[64, 32]"
    assert trial_rules.decode_config(cells) == hp
    row = {**cells, "config.momentum": np.float32("nan"), "config.batch_size": np.int64(64)}
    assert trial_rules.decode_config(row, ["momentum", "batch_size", "lr"]) == {"batch_size": 64, "lr": 0.01}
