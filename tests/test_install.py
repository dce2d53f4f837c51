"""orch as a new user installs it: ``pip install .`` (not editable), then ``orch init`` and the
starter project, from a directory outside the repository.

The installed copy goes into a directory of its own, first on PYTHONPATH, so that it, not this
checkout's editable install, is the ``orchestrator`` every process imports (asserted). The build
runs on a copy of the files a build reads, so the checkout gets no build/ or egg-info of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.store.tables import Store
from tests.conftest import ROOT, kill_driver_at, orch_env, store_rows
from tests.test_your_code import write_project

pytestmark = pytest.mark.slow

BUILD_FILES = ["pyproject.toml", "README.md", "orchestrator", "models", "conf", "search_spaces"]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --target SITE .`` of this checkout; returns SITE."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    for name in BUILD_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=IGNORED)
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    site = tmp / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                        "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return site


def python(site: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` with the installed copy first on PYTHONPATH, from ``cwd``."""
    env = orch_env({"PYTHONPATH": str(site)})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p.stdout


def test_the_installed_copy_has_every_package_and_shipped_file(installed: Path, tmp_path: Path) -> None:
    code = ("import importlib.resources as r, orchestrator, orchestrator.models; from orchestrator import shipped; "
            "print(orchestrator.__file__); print(orchestrator.models.__file__); "
            "print(r.files('orchestrator.search_spaces')); print(shipped.folder('conf')); "
            "print(' '.join(shipped.search_spaces()))")
    lines = ok(python(installed, "-c", code, cwd=tmp_path)).splitlines()
    assert lines[:4] == [str(installed / "orchestrator" / "__init__.py"), str(installed / "orchestrator" / "models" /
                         "__init__.py"), str(installed / "orchestrator" / "search_spaces"),
                         str(installed / "orchestrator" / "conf")]
    assert lines[4].split() == sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml"))
    # Every package of the checkout is installed (a package missing from pyproject.toml's list is not).
    for init in (ROOT / "orchestrator").rglob("__init__.py"):
        assert (installed / init.relative_to(ROOT)).is_file(), init
    for folder in ("conf", "search_spaces"):
        for f in (ROOT / folder).glob("*.yaml"):
            assert (installed / "orchestrator" / folder / f.name).is_file(), f
    for rel in ("README.md", "conf/sweep.yaml", "models/__init__.py", "models/net.py", "train.py"):
        assert (installed / "orchestrator" / "templates" / "project" / rel).is_file(), rel


def test_init_then_check_then_sweep_as_a_new_user(installed: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    assert not (project / "conf").exists()
    where = ok(python(installed, "-c", "import orchestrator; print(orchestrator.__file__)", cwd=project))
    assert where.strip() == str(installed / "orchestrator" / "__init__.py")

    out = ok(python(installed, "-m", "orchestrator", "init", cwd=project))
    assert out.splitlines()[-1] == "Next: orch sweep conf/sweep.yaml"
    assert (project / "train.py").is_file() and (project / "search_spaces" / "mlp_adam.yaml").is_file()

    # A config naming a shipped space by name, from a directory without search_spaces/.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "by_name.yaml").write_text("study: by-name\ndata: {source: 'sklearn:digits'}\nsearch_space: mlp_sgd\n")
    out = ok(python(installed, "-m", "orchestrator", "check", "by_name.yaml", "--config-only", cwd=elsewhere))
    assert "by_name.yaml: ok" in out and "momentum" in out

    if not (installed / "orchestrator" / "train" / "context.py").is_file():
        pytest.skip("the trial contract (orchestrator/train/context.py) is not there yet: no check or sweep of "
                    "the starter project")
    out = ok(python(installed, "-m", "orchestrator", "check", "conf/sweep.yaml", cwd=project))
    assert "conf/sweep.yaml: ok" in out and "checks passed" in out
    out = ok(python(installed, "-m", "orchestrator", "sweep", "conf/sweep.yaml", "--no-report", cwd=project))
    assert "16 trials (random search), asha scheduler" in out
    assert "Best trial " in out and "Results: results" in out
    assert (project / "results" / "trials").is_dir()
    assert os.listdir(project / "results" / "best")  # the study's best config, promoted


CNN = """
study: {study}
data: {{factory: "orchestrator.examples.digits:images", task: classification}}
model: {{name: cnn, channels: 8, hidden: 32}}
train: {{optimizer: adam}}
search_space: cnn_adam
scheduler: {{name: asha, max_epochs: 4, grace_period: 1, reduction_factor: 2}}
search: {{num_samples: 4, seed: 0}}
"""

API = """
import json, sys
import orchestrator as orch

config = sys.argv[1]
overrides = sys.argv[2:]
if config == "loop":  # the project's own loop, as a dict
    config = {"study": "loop-api", "data": {"factory": "data:load", "task": "classification"},
              "model": {"factory": "models.net:build"}, "trainable": "train:fit",
              "search_space": {"lr": {"loguniform": [1.0e-3, 3.0e-2]}},
              "scheduler": {"name": "asha", "max_epochs": 4, "grace_period": 1, "reduction_factor": 2},
              "search": {"num_samples": 4}}
result = orch.sweep(config, overrides)
print(json.dumps({"study": result.study, "sweep": result.sweep_id, "best": result.best_config,
                  "trials": len(result.trials), "same": len(orch.results(study=result.study, sweep=result.sweep_id)),
                  "best_trial": result.best_trial["trial_id"], "model": orch.best(result.study)["model"]}))
"""

PBT = ["scheduler.name=pbt", "scheduler.max_epochs=8", "scheduler.perturbation_interval=2", "search.num_samples=4",
       "search_space={lr: {loguniform: [1.0e-4, 1.0e-1]}}"]


def check_exploits(store: Path, study: str) -> None:
    """Each exploit handed the user's loop the donor's state and the new learning rate."""
    exploits = Store(store).read("exploits", study)
    assert len(exploits), "no exploit happened: nothing was tested"
    metrics = Store(store).metrics(study)
    for _, e in exploits.iterrows():
        rows = metrics[(metrics["trial_id"] == e["trial_id"]) & (metrics["generation"] == e["generation"])]
        first = rows.sort_values("epoch").iloc[0]
        assert first["restored_seen"] > 0 and first["epoch"] == e["donor_epoch"] + 1, (first, e)
        assert first["applied_lr"] == pytest.approx(json.loads(e["new_config"])["lr"]), (first, e)


@pytest.mark.timeout(900)  # ten sweeps, every reader and two kill-and-resume cycles, one after another
def test_a_users_project_runs_the_cnn_and_its_own_loop_from_the_cli_and_python(installed: Path,
                                                                               tmp_path: Path) -> None:
    project = write_project(tmp_path / "project")
    (project / "cnn.yaml").write_text(CNN.format(study="cnn"))
    (project / "api.py").write_text(API)
    store = project / "results"

    # The command line: the shipped CNN under ASHA, the project's loop under PBT.
    out = ok(python(installed, "-m", "orchestrator", "sweep", "cnn.yaml", "--no-report", cwd=project))
    assert "4 trials (random search), asha scheduler" in out and "Best trial " in out
    ok(python(installed, "-m", "orchestrator", "sweep", "conf/sweep.yaml", *PBT, "study=loop-pbt", "--no-report",
              cwd=project, timeout=600))
    check_exploits(store, "loop-pbt")

    # Python: the project's loop (a dict config) under ASHA, the CNN under PBT.
    for args in (["loop"], ["cnn.yaml", "study=cnn-pbt", "scheduler.name=pbt", "scheduler.max_epochs=6",
                            "scheduler.perturbation_interval=2", "search_space={lr: {loguniform: [1.0e-4, 1.0e-1]}}"]):
        result = json.loads(ok(python(installed, "api.py", *args, cwd=project, timeout=600)).splitlines()[-1])
        assert result["trials"] == result["same"] == 4 and result["best"], result
        expected = {"factory": "models.net:build"} if args == ["loop"] else {"name": "cnn"}
        assert expected.items() <= result["model"].items(), result
    trials = Store(store).trials()
    assert set(trials["study"].astype(str)) == {"cnn", "loop-pbt", "loop-api", "cnn-pbt"}
    cnn = trials[trials["study"] == "cnn"]
    assert cnn["best_val_accuracy"].max() > 0.8 and cnn["test_accuracy"].notna().all()

    # Every reader of the store, from another directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for study in ("cnn", "loop-pbt", "loop-api", "cnn-pbt"):
        assert study in ok(python(installed, "-m", "orchestrator", "results", "--study", study, "--store", str(store),
                                  cwd=elsewhere))
        assert "model:" in ok(python(installed, "-m", "orchestrator", "best", study, "--store", str(store),
                                     cwd=elsewhere))
        ok(python(installed, "-m", "orchestrator", "report", study, "--store", str(store), cwd=elsewhere))
    retune = ok(python(installed, "-m", "orchestrator", "retune", "--all", "--dry-run", "--store", str(store),
                       cwd=elsewhere))
    assert "error" not in retune and all(s in retune for s in ("cnn", "loop-pbt", "loop-api", "cnn-pbt")), retune

    # kill -9 of the driver, then --resume: the CNN and the loop.
    for config, study in (("cnn.yaml", "cnn-resume"), ("conf/sweep.yaml", "loop-resume")):
        args = ["-m", "orchestrator", "sweep", config, f"study={study}", "scheduler.name=fifo",
                "scheduler.max_epochs=6", "search.num_samples=6", "train.checkpoint_every=2",
                "train.keep_checkpoints=null", "--no-report"]
        env = orch_env({"PYTHONPATH": str(installed), "ORCH_STORE_FLUSH_S": "0.5", "EPOCH_PAUSE_S": "0.3"})
        proc = subprocess.Popen([sys.executable, *args], cwd=project, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        kill_driver_at(proc, lambda s=study: 1 <= len(_rows(store, s)) < 6)
        before = _rows(store, study)
        out = ok(python(installed, *args, "--resume", cwd=project, timeout=600))
        assert "Resuming sweep" in out
        after = _rows(store, study)
        assert len(after) == 6 and after["trial_id"].is_unique and set(before["trial_id"]) <= set(after["trial_id"])
        assert set(after["status"]) == {"completed"} and (after["epochs"] == 6).all(), after


def _rows(store: Path, study: str):
    rows = store_rows(store, "trials")
    return rows[rows["study"] == study] if len(rows) else rows
