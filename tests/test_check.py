"""`orch check`: passes on the shipped configs, and fails with the reason on broken set-ups."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import CONFIG, ROOT, imported_modules, orch, orch_env

NO_LR_KNOB = "search_space={batch_size: {pow2: [16, 64]}}"  # so that train.lr is the lr checked


def verdicts(out: str) -> dict[str, str]:
    """check name -> ok / warn / FAIL, from the report."""
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("ok", "warn", "FAIL") and line.startswith("  "):
            rest = line.strip()[len(parts[0]):].strip()
            for name in ("inputs scaled", "target fits the task", "loss at initialisation",
                         "gradients flow", "memorises a few rows", "trains stably"):
                if rest.startswith(name):
                    found[name] = parts[0]
    return found


@pytest.mark.parametrize("config", ["conf/tabular.yaml", "conf/tabular_regression.yaml"])
def test_shipped_configs_pass(config) -> None:
    r = orch("check", config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(verdicts(r.stdout).values()) <= {"ok", "warn"} and len(verdicts(r.stdout)) == 6
    assert "All 6 checks passed" in r.stdout


@pytest.mark.slow  # a few seconds of training checks (CI runs the slow tests too)
def test_unscaled_huge_inputs_fail(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame({"income": rng.lognormal(11, 1, n), "area_m2": rng.normal(5e4, 2e4, n),
                          "age": rng.integers(18, 90, n).astype(float)})
    frame["bought"] = (frame["income"] > np.median(frame["income"])).astype(int)
    path = tmp_path / "people.csv"
    frame.to_csv(path, index=False)
    r = orch("check", CONFIG, "data.source=null", f"data.path={path}", "data.target=bought", "data.scale=none")
    assert r.returncode == 1, r.stdout + r.stderr
    v = verdicts(r.stdout)
    assert v["inputs scaled"] == "FAIL"
    assert "set data.scale: standard" in r.stdout and "'area_m2'" in r.stdout or "'income'" in r.stdout
    # The same table, scaled, passes that check.
    ok = orch("check", CONFIG, "data.source=null", f"data.path={path}", "data.target=bought")
    assert verdicts(ok.stdout)["inputs scaled"] == "ok"


@pytest.mark.slow  # a few seconds of training checks (CI runs the slow tests too)
def test_regression_target_given_to_a_classifier_fails(tmp_path: Path) -> None:
    r = orch("check", CONFIG, "data.source=sklearn:diabetes", "data.task=classification")
    assert r.returncode == 1, r.stdout + r.stderr
    assert verdicts(r.stdout)["target fits the task"] == "FAIL"
    assert "looks continuous" in r.stdout and "data.task: regression" in r.stdout
    # A float target (prices) is caught by its non-integer values.
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=200)})
    frame["price"] = 10 + 3 * frame["x"] + rng.normal(size=200) * 0.1
    frame.loc[:5, "price"] = 7.0  # a few repeats, so not every value is its own class
    path = tmp_path / "prices.csv"
    frame.to_csv(path, index=False)
    r = orch("check", CONFIG, "data.source=null", f"data.path={path}", "data.target=price", "data.task=classification")
    assert r.returncode == 1
    assert "non-integer values" in r.stdout and "regression" in r.stdout


def test_a_learning_rate_of_10_fails() -> None:
    r = orch("check", CONFIG, "data.source=sklearn:iris", NO_LR_KNOB, "train.lr=10")
    assert r.returncode == 1, r.stdout + r.stderr
    v = verdicts(r.stdout)
    assert v["trains stably"] == "FAIL" and v["gradients flow"] == "ok"
    assert "diverged" in r.stdout and "lower the learning rate" in r.stdout and "lr 10" in r.stdout
    ok = orch("check", CONFIG, "data.source=sklearn:iris", NO_LR_KNOB, "train.lr=0.003")
    assert ok.returncode == 0, ok.stdout


def test_a_dead_layer_fails() -> None:
    r = orch("check", CONFIG, "data.source=sklearn:iris", "model.bias_init=-10")
    assert r.returncode == 1, r.stdout + r.stderr
    v = verdicts(r.stdout)
    assert v["gradients flow"] == "FAIL" and v["memorises a few rows"] == "FAIL" and v["trains stably"] == "FAIL"
    assert "no gradient reaches layer 1" in r.stdout


@pytest.mark.slow
def test_a_bad_config_is_exit_2_not_a_check(tmp_path: Path) -> None:
    r = orch("check", CONFIG, "train.loss=huber")
    assert r.returncode == 2 and "train.loss" in r.stderr and "Traceback" not in r.stderr
    r = orch("check", CONFIG, "data.source=sklearn:iris", "train.loss=bce")
    assert r.returncode == 2 and "bce needs two classes" in r.stderr
    r = orch("check", CONFIG, "model.activation=swish")
    assert r.returncode == 2 and "model.activation" in r.stderr and "swish" in r.stderr


def test_check_runs_without_ray() -> None:
    p = orch("check", CONFIG, env={"PYTHONPROFILEIMPORTTIME": "1"}, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    modules = imported_modules(p.stderr)
    assert {"orchestrator.cli", "torch"} <= modules  # (every import is listed)
    assert not {m for m in modules if m == "ray" or m.startswith("ray.")}, "ray was imported"


def test_a_projects_own_models_package_is_not_shadowed_by_orchs(tmp_path: Path) -> None:
    # A user's project with a top-level `models` package of its own, and the shipped config: orch's
    # models are `orchestrator.models`, so the config's model (mlp) is found all the same.
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text('"""The project\'s own models."""\n')
    (project / "models" / "resnet.py").write_text("def build() -> str:\n    return 'resnet'\n")
    shutil.copytree(ROOT / "conf", project / "conf")
    shutil.copytree(ROOT / "search_spaces", project / "search_spaces")
    env = {"PYTHONPATH": os.pathsep.join(d for d in (str(project), os.environ.get("PYTHONPATH"))
                                         if d)}
    p = orch("check", "--config-only", "conf/tabular.yaml", cwd=project, env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "unknown model" not in p.stderr
    # From there, `import models` is the project's, and orch's models are still orch's.
    code = ("import models, models.resnet, orchestrator.models.mlp\n"
            "print(models.__file__)\nprint(orchestrator.models.mlp.__file__)\n")
    found = subprocess.run([sys.executable, "-c", code], cwd=project, env=orch_env(env),
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    theirs, ours = found.stdout.splitlines()
    assert Path(theirs) == project / "models" / "__init__.py"
    assert project not in Path(ours).parents


def test_the_shipped_models_load_from_a_source_checkout_first_on_the_path(tmp_path: Path) -> None:
    """A container's working directory or a Ray Job's working_dir puts the checkout first on
    sys.path, ahead of the installed package: its ``orchestrator`` has no ``models`` folder, and
    the checkout's top-level ``models/`` must still be found as ``orchestrator.models``."""
    import site

    script = (
        "import sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}]\n"
        f"sys.path.extend({site.getsitepackages()!r})\n"  # the packages, without the .pth hooks
        "from orchestrator.config import models\n"
        "print(models.names(), models.get('mlp').__module__)\n"
        "import orchestrator.models.mlp as m\n"
        "print(m.__file__)\n"
    )
    # -S: no site processing, so the editable install's finder (a .pth hook) is not there.
    run = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    names, module = run.stdout.splitlines()[0].rsplit(" ", 1)
    assert names == "['cnn', 'mlp']" and module == "orchestrator.models.mlp"
    assert run.stdout.splitlines()[1] == str(ROOT / "models" / "mlp.py")
