"""The Python API (``import orchestrator as orch``): cheap to import, the same sweeps, results and
errors as the command line, and Ray's settings set as a sweep starts Ray, not on import.

Sweeps run in a process of their own (as a user's script does), so that the Ray they start and the
environment they set stay out of the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import orchestrator as orch
from orchestrator.errors import ConfigError, UserError
from orchestrator.tune.connect import RAY_ENVIRONMENT
from tests.conftest import ROOT, assert_user_error, cli, orch_env

# The bundled digits, tiny: three trials of two epochs each, every one run to its end.
TINY = {
    "study": "api-digits",
    "data": {"source": "sklearn:digits"},
    "search_space": "mlp_adam",  # a shipped space by name: there is no such file in the test's directory
    "scheduler": {"name": "fifo", "max_epochs": 2},
    "search": {"num_samples": 3, "seed": 0},
    "ray": {"address": None, "num_cpus": 2},
    "store": {"path": "store"},  # relative: from the working directory, as a dict config's paths are
}
LOGGER_FILES = {"result.json", "progress.csv", "params.json"}  # what Tune's default loggers write per trial

SWEEP_SCRIPT = """
import json, os, sys
import orchestrator as orch

result = orch.sweep(json.loads(sys.argv[1]), overrides=sys.argv[2:])
result.trials.to_pickle("trials.pkl")
print("RESULT " + json.dumps({
    "study": result.study, "sweep_id": result.sweep_id, "store": str(result.store), "finished": result.finished,
    "best_config": result.best_config, "best_value": result.best_value,
    "best_trial_id": None if result.best_trial is None else result.best_trial["trial_id"],
    "environment": {name: os.environ.get(name) for name in json.loads(os.environ["PROBE_NAMES"])},
}, default=str))
"""


def run_script(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -c script args`` from ``cwd``, in orch's test environment without orch's Ray settings
    (so that the sweep's own are seen to take effect), plus ``env``."""
    base = {k: v for k, v in orch_env().items() if k not in RAY_ENVIRONMENT}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))
    base["PROBE_NAMES"] = json.dumps(list(RAY_ENVIRONMENT))
    return subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def result_line(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, p.stdout
    return json.loads(lines[0][len("RESULT "):])


def trial_files(store: Path, sweep_id: str) -> set[str]:
    """The names of the files in the trials' directories of Tune's experiment (checkpoints aside)."""
    exp = store / "_ray" / sweep_id
    return {f.name for d in exp.iterdir() if d.is_dir() for f in d.iterdir() if f.is_file()}


# -- importing ------------------------------------------------------------------------------------


def test_importing_orch_is_cheap_and_changes_nothing() -> None:
    code = """
import json, os, sys
before = dict(os.environ)
import orchestrator as orch
api = (orch.sweep, orch.results, orch.best, orch.Sweep)   # the API module, imported on first use
import orchestrator.cli
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "torch", "pandas"))
print(json.dumps({"same": dict(os.environ) == before, "heavy": heavy, "api": "orchestrator.api" in sys.modules}))
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out == {"same": True, "heavy": [], "api": True}


def test_importing_the_sweep_driver_sets_no_environment_and_starting_ray_does() -> None:
    # Ray and torch set a few variables of their own as they are imported: those first, then orch's
    # driver (which imports both), which must add nothing. ray_environment() then sets orch's Ray
    # settings, each only where the user has not: a user's own value wins.
    code = """
import json, os
import ray.tune, torch
before = dict(os.environ)
from orchestrator.tune import connect, driver
imported = dict(os.environ) == before
connect.ray_environment()
print(json.dumps({"imported": imported, "after": {k: os.environ.get(k) for k in connect.RAY_ENVIRONMENT}}))
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**{k: v for k, v in os.environ.items() if k not in RAY_ENVIRONMENT},
                            "RAY_USAGE_STATS_ENABLED": "1"})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["imported"] is True
    assert out["after"] == {**RAY_ENVIRONMENT, "RAY_USAGE_STATS_ENABLED": "1"}


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'swep'"):
        orch.swep  # noqa: B018


# -- a sweep --------------------------------------------------------------------------------------


def test_sweep_of_a_dict_returns_the_best_and_the_trials_of_the_store(tmp_path: Path) -> None:
    p = run_script(SWEEP_SCRIPT, json.dumps(TINY), "train.seed=1", cwd=tmp_path)
    out = result_line(p)
    store = tmp_path / "store"
    assert out["study"] == "api-digits" and out["finished"] is True
    assert Path(out["store"]) == Path("store")
    assert f"Sweep {out['sweep_id']} of api-digits: 3 trials" in p.stdout  # printed as orch sweep prints it

    # The trials frame is the store's: orch.results returns the same rows.
    trials = pd.read_pickle(tmp_path / "trials.pkl")
    assert len(trials) == 3
    for stored in (orch.results(store=store, study="api-digits"), orch.results(store=store, sweep=out["sweep_id"])):
        pd.testing.assert_frame_equal(trials.sort_values("trial_id").reset_index(drop=True),
                                      stored.sort_values("trial_id").reset_index(drop=True))

    # The best trial is the one with the lowest val_loss; best_config holds its searched knobs.
    best = trials.loc[trials["best_val_loss"].idxmin()]
    assert out["best_trial_id"] == best["trial_id"]
    assert out["best_value"] == pytest.approx(best["best_val_loss"])
    for knob in ("lr", "batch_size", "hidden", "layers", "dropout", "beta1", "beta2", "eps"):
        assert out["best_config"][knob] == pytest.approx(best[f"config.{knob}"]), knob
    assert set(trials["config.seed"]) == {1}  # the override applied
    # orch.best is what `orch best` prints, read as YAML.
    assert orch.best("api-digits", store=store)["train"]["lr"] == pytest.approx(out["best_config"]["lr"])

    # orch's Ray settings were set as the sweep started Ray (not before: the script's environment
    # had none), and Tune's per-trial loggers, off by TUNE_DISABLE_AUTO_CALLBACK_LOGGERS, wrote nothing.
    assert out["environment"] == RAY_ENVIRONMENT
    assert not trial_files(store, out["sweep_id"]) & LOGGER_FILES


PROBE_TRAINABLE = '''
import json, os, sys


def fit(config, ctx):
    """Record what the trial's process sees, and report a made-up loss."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"probe-{os.getpid()}.json"), "w") as f:
        json.dump({"RAY_TRAIN_V2_ENABLED": os.environ.get("RAY_TRAIN_V2_ENABLED"),
                   "train_v2_imported": "ray.train.v2.api.config" in sys.modules}, f)
    for epoch in range(1, ctx.max_epochs + 1):
        ctx.report(epoch, {"train_loss": 1.0 / epoch, "val_loss": 1.0 / epoch + config["lr"]})
'''


@pytest.mark.slow
def test_a_users_own_ray_setting_wins_and_orchs_reach_the_trials(tmp_path: Path) -> None:
    # The negative control of the sweep above: with the user's TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0,
    # Tune's loggers write their files. And RAY_TRAIN_V2_ENABLED, set after this process imported
    # ray.tune, still reaches every trial's process before it imports ray.train.
    if not (ROOT / "orchestrator" / "train" / "context.py").is_file():
        pytest.skip("the trial contract (orchestrator/train/context.py) is not there yet")
    (tmp_path / "probe.py").write_text(PROBE_TRAINABLE)
    config = {**TINY, "study": "api-probe", "trainable": "probe:fit",
              "search_space": {"lr": {"loguniform": [1.0e-4, 1.0e-1]}}}
    p = run_script(SWEEP_SCRIPT, json.dumps(config), cwd=tmp_path, env={"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"})
    out = result_line(p)
    assert out["environment"] == {**RAY_ENVIRONMENT, "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"}
    assert trial_files(tmp_path / "store", out["sweep_id"]) >= LOGGER_FILES
    probes = [json.loads(f.read_text()) for f in tmp_path.glob("probe-*.json")]
    assert probes and all(pr == {"RAY_TRAIN_V2_ENABLED": "0", "train_v2_imported": False} for pr in probes)


# -- errors ---------------------------------------------------------------------------------------


def test_a_bad_config_is_the_commands_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("study: bad\ndata: {source: 'sklearn:digits'}\ntrain: {lrr: 0.1}\n")
    line = assert_user_error(cli("sweep", path), "unknown key 'train.lrr'", "did you mean 'train.lr'")
    with pytest.raises(ConfigError) as err:
        orch.sweep(path)
    assert f"orch: error: {err.value}" == line
    # The same config as a dict: the same message, naming the config instead of the file.
    with pytest.raises(ConfigError) as err:
        orch.sweep({"study": "bad", "data": {"source": "sklearn:digits"}, "train": {"lrr": 0.1}})
    assert f"orch: error: {err.value}" == line.replace(str(path.resolve()), "config")


def test_an_unknown_shipped_space_is_the_commands_error(tmp_path: Path) -> None:
    path = tmp_path / "by_name.yaml"
    path.write_text("study: by-name\ndata: {source: 'sklearn:digits'}\nsearch_space: mlp_adma\n")
    line = assert_user_error(cli("sweep", path), "search_space:", "did you mean 'mlp_adam'", "mlp_sgd")
    with pytest.raises(ConfigError) as err:
        orch.sweep({"study": "by-name", "data": {"source": "sklearn:digits"}, "search_space": "mlp_adma"})
    assert f"orch: error: {err.value}" == line


def test_overrides_and_config_types_are_checked(tmp_path: Path) -> None:
    config = {"study": "x", "data": {"source": "sklearn:digits"}}
    with pytest.raises(ConfigError, match="override 'search.num_samples': expected key=value"):
        orch.sweep(config, overrides=["search.num_samples"])
    with pytest.raises(UserError, match="a list of key=value strings"):
        orch.sweep(config, overrides="search.num_samples=2")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="a path, a mapping or a SweepConfig"):
        orch.sweep(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="config file not found"):
        orch.sweep(tmp_path / "missing.yaml")


def test_a_config_object_is_checked_again_with_its_overrides() -> None:
    from orchestrator.config.load import load

    cfg = load({"study": "obj", "data": {"source": "sklearn:digits"}, "search_space": "mlp_sgd"})
    copy = load(cfg, ["search.num_samples=5"])
    assert copy.search.num_samples == 5 and cfg.search.num_samples != 5  # the object itself is untouched
    with pytest.raises(ConfigError, match=r"^scheduler.max_epochs: must be in \[1, inf\]"):
        load(cfg, ["scheduler.max_epochs=0"])


def test_results_and_best_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no results store at"):
        orch.results(store=tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    assert orch.results(store=tmp_path / "empty").empty
    with pytest.raises(UserError, match="no trials of study 'nope'"):
        orch.results(store=tmp_path / "empty", study="nope")
    with pytest.raises(UserError, match="study"):
        orch.results(store=tmp_path / "empty", study="../up")
    with pytest.raises(UserError, match="has no finished sweeps"):
        orch.best("nope", store=tmp_path / "empty")
