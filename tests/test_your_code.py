"""orch on a user's own code: a project directory outside the repository holding its own ``models/``
package, a data module and a ``train.py``, run with the real CLI from there.

The project's training loop keeps a counter of the samples its weights have seen in its state, and
reports what it restored: an exploit (population-based training) must hand it another trial's
state together with the new hyperparameters.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.store.tables import Store
from tests.conftest import as_run, assert_user_error, cli, kill_driver_at, orch, orch_process, store_rows

MODEL = '''
from torch import nn


def build(input_shape, n_outputs, width: int = 16, dropout: float = 0.0):
    """A small convolutional net, sized from one sample's shape."""
    if not 1 <= width <= 4096:
        raise ValueError(f"width must be in [1, 4096], got {width}")
    channels, height, breadth = input_shape
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * height * breadth, width), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(width, n_outputs))


build.mutable = ("dropout",)


def not_a_model(input_shape, n_outputs, width: int = 16):
    return [1, 2, 3]


def wrong_outputs(input_shape, n_outputs, width: int = 16):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


NOT_CALLABLE = 42
'''

DATA = '''
import torch
from sklearn.datasets import load_digits


def load(seed=0, val_fraction=0.2, test_fraction=0.2, limit: int = 1797):
    d = load_digits()
    x = torch.tensor(d.images[:limit], dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(d.target[:limit])
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    n_val, n_test = int(len(y) * val_fraction), int(len(y) * test_fraction)
    val, test, train = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
    return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}


def ragged(seed=0):
    x = torch.zeros(20, 1, 8, 8)
    return {"train": (x, torch.zeros(19, dtype=torch.long)), "val": (x, torch.zeros(20, dtype=torch.long))}
'''

TRAIN = '''
import os
import time

import torch
import torch.nn.functional as F


def fit(config, ctx):
    model = ctx.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    seen, restored = 0, {}
    state = ctx.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        for group in opt.param_groups:
            group["lr"] = config["lr"]
        seen = state["seen"]
        restored = {"restored_seen": float(seen), "applied_lr": opt.param_groups[0]["lr"]}
    for epoch in range(ctx.start_epoch, ctx.max_epochs + 1):
        model.train()
        total = 0.0
        for x, y in ctx.loader("train"):
            x, y = x.to(ctx.device), y.to(ctx.device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            seen += len(y)
        model.eval()
        with torch.no_grad():
            x, y = next(iter(ctx.loader("val", batch_size=10_000)))
            out = model(x.to(ctx.device))
            val_loss = F.cross_entropy(out, y).item()
            accuracy = (out.argmax(1) == y).float().mean().item()
        ctx.report(epoch, {"train_loss": total / len(ctx.data.train), "val_loss": val_loss,
                           "val_accuracy": accuracy, **restored},
                   state=lambda: {"model": model.state_dict(), "opt": opt.state_dict(), "seen": seen})
        restored = {}
        time.sleep(float(os.environ.get("EPOCH_PAUSE_S", "0")))  # a test that kills the sweep halfway
        if ctx.should_stop:
            break


def silent(config, ctx):
    return None
'''

CONFIG = '''
study: {study}
data: {{factory: "data:load", task: classification}}
model: {{factory: "models.net:build"}}
trainable: "train:fit"
train: {{batch_size: 64}}
search_space:
  lr: {{loguniform: [1.0e-3, 3.0e-2]}}
  width: {{int: [8, 32], log: true}}
scheduler: {{name: asha, max_epochs: 4, grace_period: 1, reduction_factor: 2}}
search: {{num_samples: 4, seed: 0}}
resources: {{cpu_per_trial: 1}}
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "project")


def write_project(root: Path) -> Path:
    """A user's project: ``models/net.py``, ``data.py``, ``train.py`` and ``conf/sweep.yaml``."""
    (root / "models").mkdir(parents=True)
    (root / "conf").mkdir()
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "net.py").write_text(textwrap.dedent(MODEL))
    (root / "data.py").write_text(textwrap.dedent(DATA))
    (root / "train.py").write_text(textwrap.dedent(TRAIN))
    (root / "conf" / "sweep.yaml").write_text(CONFIG.format(study="mine"))
    return root


@pytest.mark.slow
def test_a_sweep_of_the_users_model_data_and_loop_and_every_reader_of_it(project: Path, tmp_path: Path) -> None:
    store = project / "results"
    p = orch("sweep", "conf/sweep.yaml", cwd=project)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1797 samples of shape (1, 8, 8) (classification)" in p.stdout
    trials = store_rows(store, "trials")
    assert len(trials) == 4 and set(trials["status"]) <= {"completed", "stopped_early"}, trials
    assert trials["best_val_accuracy"].max() > 0.5
    assert "test_loss" not in trials or trials["test_loss"].isna().all()  # the loop reports none: none made up
    metrics = store_rows(store, "metrics")
    assert len(metrics) == trials["epochs"].sum()  # every reported epoch, once
    # Readers of the store, from another directory (cron's): the sweep recorded the project.
    elsewhere = project.parent
    best = orch("best", "mine", "--store", store, cwd=elsewhere)
    assert best.returncode == 0, best.stderr
    assert "factory: models.net:build" in best.stdout and "width:" in best.stdout
    results = orch("results", "--study", "mine", "--store", store, cwd=elsewhere)
    assert results.returncode == 0 and "mine" in results.stdout, results.stderr
    report = orch("report", "mine", "--store", store, cwd=elsewhere)
    assert report.returncode == 0, report.stderr
    retune = orch("retune", "--all", "--dry-run", "--store", store, cwd=elsewhere)
    assert retune.returncode == 0, retune.stdout + retune.stderr
    assert "mine" in retune.stdout and "error" not in retune.stdout, retune.stdout

    # Readers of the store import none of the code its configs name: they work with the model gone.
    (project / "models" / "net.py").rename(project / "models" / "net.txt")
    best_again = orch("best", "mine", "--store", store, cwd=elsewhere)
    assert best_again.returncode == 0 and best_again.stdout == best.stdout, best_again.stderr

    # A store writer points the stored config at code of its own: re-tuning refuses to import it.
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "ran"
    (evil / "data.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef load(**kw):\n    return None\n")
    for f in (store / "sweeps").rglob("*.parquet"):
        table = pq.read_table(f).to_pandas()
        table["config_yaml"] = [re.sub(r"(?m)^project: .*$", f"project: {evil}", t) for t in table["config_yaml"]]
        table.to_parquet(f, index=False)
    retune = orch("retune", "--all", "--dry-run", "--store", store, cwd=elsewhere)
    assert "not signed by this machine's key" in retune.stdout and retune.returncode == 1, retune.stdout
    assert not marker.exists(), "the store's code ran"


@pytest.mark.slow
def test_pbt_exploits_hand_the_users_loop_the_donors_state_and_the_new_hyperparameters(project: Path) -> None:
    store = project / "results"
    p = orch("sweep", "conf/sweep.yaml", "scheduler.name=pbt", "scheduler.max_epochs=8",
             "scheduler.perturbation_interval=2", "search.num_samples=4",
             "search_space={lr: {loguniform: [1.0e-4, 1.0e-1]}}", cwd=project, timeout=400)
    assert p.returncode == 0, p.stdout + p.stderr
    exploits = Store(store).read("exploits", "mine")
    assert len(exploits), "no exploit happened: nothing was tested"
    metrics = Store(store).metrics("mine")  # (columns unified across the files: the loop's own too)
    for _, e in exploits.iterrows():
        rows = metrics[(metrics["trial_id"] == e["trial_id"]) & (metrics["generation"] == e["generation"])]
        first = rows.sort_values("epoch").iloc[0]
        # The donor's weights came with the samples they had seen (its state, not a fresh start) ...
        assert first["restored_seen"] > 0 and first["epoch"] == e["donor_epoch"] + 1, (first, e)
        # ... and the loop trains with the exploit's new learning rate.
        assert first["applied_lr"] == pytest.approx(json.loads(e["new_config"])["lr"]), (first, e)


@pytest.fixture
def inside(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The project as the working directory of this process (for the in-process CLI); its modules
    (models, data, train) are forgotten afterwards."""
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield project
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("models", "data", "train"):
            del sys.modules[name]


@pytest.mark.parametrize("override, fragments", [
    ("model.factory=models.nets:build", ["model.factory: no module named 'models.nets'"]),
    ("model.factory=models.net:NOT_CALLABLE", ["model.factory: models.net:NOT_CALLABLE is a int, not a function"]),
    ("model.factory=models.net:missing", ["model.factory: module 'models.net' has no 'missing'"]),
    ("model.factory=models.net:not_a_model", ["model.factory: models.net:not_a_model returned a list, "
                                               "not a torch.nn.Module"]),
    ("model.factory=models.net:wrong_outputs", ["model.factory: the model's output for a batch of 2 samples of "
                                                 "shape (1, 8, 8) is (2, 3), expected (2, 10)"]),
    ("model.dropout=2", ["model.factory: dropout probability has to be between 0 and 1, but got 2"]),
    ("data.factory=data:ragged", ["data.factory: data:ragged: train has 20 inputs but 19 targets"]),
    ("trainable=train:nothing", ["trainable: module 'train' has no 'nothing'"]),
])
def test_bad_code_in_a_config_is_one_line_before_ray_starts(inside: Path, override: str,
                                                            fragments: list[str]) -> None:
    for command in ("check", "sweep"):
        run = cli(command, "conf/sweep.yaml", override)
        assert_user_error(run, *fragments)
    assert not (inside / "results").exists()


def test_bad_code_is_one_line_from_the_command_line_too(project: Path) -> None:
    run = as_run(orch("sweep", "conf/sweep.yaml", "model.factory=models.net:not_a_model", cwd=project))
    assert_user_error(run, "model.factory: models.net:not_a_model returned a list, not a torch.nn.Module")
    assert not (project / "results").exists()


@pytest.mark.slow
def test_a_training_function_that_never_reports_is_named_with_the_rule(project: Path) -> None:
    run = as_run(orch("sweep", "conf/sweep.yaml", "trainable=train:silent", "search.num_samples=2",
                      "search_space={lr: {loguniform: [1.0e-3, 3.0e-2]}}", cwd=project))
    # A run-time error: the sweep's progress is on stdout, the error one line on stderr, exit 2.
    assert run.code == 2 and "Traceback" not in run.stderr, run.stderr
    assert "Sweep " in run.stdout
    (line,) = run.stderr.splitlines()
    assert line.startswith("orch: error: trainable: trial "), line
    for fragment in ("train:silent returned without reporting an epoch", "ctx.report(epoch, metrics)", "'val_loss'"):
        assert fragment in line, line


@pytest.mark.slow
def test_data_loaded_in_each_trial_and_resumed_after_the_driver_is_killed(project: Path) -> None:
    store = project / "results"
    args = ["sweep", "conf/sweep.yaml", "data.load_in=trial", "search.num_samples=8", "scheduler.name=fifo",
            "scheduler.max_epochs=6", "train.checkpoint_every=2", "--store", store,
            # Every checkpoint kept: with one kept, Tune deletes the one its last saved experiment
            # state names as soon as a newer one is registered, and a kill between the two leaves
            # a trial nothing to resume from (a retry then fails: the trial ends as an error).
            "train.keep_checkpoints=null"]
    proc = orch_process(*args, cwd=project, merge_stderr=True, new_session=True,
                        env={"ORCH_STORE_FLUSH_S": "0.5", "EPOCH_PAUSE_S": "0.3"})
    # Each trial takes at least 1.8 s (a pause per epoch), so the state to kill at lasts seconds
    # even on a loaded machine.
    kill_driver_at(proc, lambda: 1 <= len(store_rows(store, "trials")) < 6)
    before = store_rows(store, "trials")
    p = orch(*args, "--resume", cwd=project)
    assert p.returncode == 0, p.stdout + p.stderr
    after = store_rows(store, "trials")
    assert len(after) == 8 and after["trial_id"].is_unique
    assert set(before["trial_id"]) <= set(after["trial_id"])
    assert (after["epochs"] == 6).all() and set(after["status"]) == {"completed"}


def test_resume_refuses_a_saved_config_naming_code_that_this_machine_did_not_sign(inside: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    exp = store / "_ray" / "20261202-000000-abcd"
    exp.mkdir(parents=True)
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "data.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    (exp / "orch_sweep.yaml").write_text(f"study: mine\ndata: {{factory: 'data:load'}}\nproject: {evil}\n")
    run = cli("sweep", "conf/sweep.yaml", "--store", store, "--resume", "20261202-000000-abcd")
    assert_user_error(run, "--resume: sweep 20261202-000000-abcd", "names code to import",
                      "not signed by this machine's key")
    assert not (tmp_path / "ran").exists()
