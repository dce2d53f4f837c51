"""Config loading and validation, and how the command line reports a bad config.

Every `orch` process imports torch and Ray Tune (about 6 s of CPU each), so the full table of
errors runs in process through the real click entry point (`orchestrator.cli.main`, the same code
path as the console script), and a few representative cases run as real subprocesses, started
together so they overlap. `pytest -m slow` also runs the whole table as subprocesses.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from orchestrator.config import load as config
from orchestrator.errors import ConfigError
from orchestrator.tune import schedulers
from tests.conftest import CONFIG, ROOT, Run, as_run, assert_user_error, cli, orch, orch_process

SPACE = ROOT / "search_spaces" / "mlp_adam.yaml"


# -- files the error cases point at -------------------------------------------------------------


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_files(d: Path) -> Path:
    """Configs, spaces and tables for the error cases, under ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    write_yaml(d / "typo.yaml", {"base": str(CONFIG), "scheduler": {"max_epoch": 5}})
    write_yaml(d / "missing_data.yaml", {
        "study": "csv-study", "data": {"path": "nothere.csv", "target": "label"}, "model": {"name": "mlp"},
    })
    write_yaml(d / "knob.yaml", {"lrr": {"loguniform": [1.0e-4, 1.0e-1]}})
    write_yaml(d / "lo_hi.yaml", {"dropout": {"uniform": [0.5, 0.1]}})
    write_yaml(d / "log_zero.yaml", {"lr": {"loguniform": [0, 0.1]}})
    write_yaml(d / "log1m.yaml", {"beta1": {"log1m": [0.5, 1.0]}})
    write_yaml(d / "pow2.yaml", {"batch_size": {"pow2": [10, 100]}})
    write_yaml(d / "a.yaml", {"base": "b.yaml", "study": "cycle"})
    write_yaml(d / "b.yaml", {"base": "a.yaml"})
    # A table whose target has a single class.
    (d / "one_class.csv").write_text("x,label\n" + "".join(f"{i * 0.5},1\n" for i in range(40)))
    write_yaml(d / "one_class.yaml", {
        "study": "one-class", "data": {"path": "one_class.csv", "target": "label"}, "model": {"name": "mlp"},
    })
    return d


# name -> (arguments of `orch check`, fragments the one-line message must hold)
CASES: dict[str, Callable[[Path], tuple[list[object], list[str]]]] = {
    "unknown_key": lambda d: (
        [CONFIG, "scheduler.max_epoch=5"],
        ["'scheduler.max_epoch'", "did you mean 'scheduler.max_epochs'"]),
    "unknown_key_in_file": lambda d: (
        [d / "typo.yaml"],
        [str(d / "typo.yaml"), "'scheduler.max_epoch'", "did you mean 'scheduler.max_epochs'"]),
    "unknown_top_level_key": lambda d: (
        [CONFIG, "schedular.name=asha"], ["'schedular'", "did you mean 'scheduler'"]),
    "wrong_type": lambda d: (
        [CONFIG, "scheduler.max_epochs=abc"], ["scheduler.max_epochs", "'abc'"]),
    "fraction_above_one": lambda d: (
        [CONFIG, "data.val_fraction=1.5"], ["data.val_fraction", "1.5", "(0, 1)"]),
    "fraction_zero": lambda d: (
        [CONFIG, "data.val_fraction=0"], ["data.val_fraction", "0", "(0, 1)"]),
    "negative_epochs": lambda d: (
        [CONFIG, "scheduler.max_epochs=-3"], ["scheduler.max_epochs", "-3"]),
    "grace_above_max_epochs": lambda d: (
        [CONFIG, "scheduler.grace_period=50"], ["scheduler.grace_period", "50", "max_epochs (30)"]),
    "unknown_scheduler": lambda d: (
        [CONFIG, "scheduler.name=bogus"], ["scheduler.name", "'bogus'", ", ".join(schedulers.names())]),
    "scheduler_typo": lambda d: (
        [CONFIG, "scheduler.name=ashaa"], ["scheduler.name", "'ashaa'", "did you mean 'asha'"]),
    "unknown_model": lambda d: (
        [CONFIG, "model.name=transformer"], ["model.name", "'transformer'", "valid: cnn, mlp"]),
    "unknown_model_knob": lambda d: (
        [CONFIG, "model.hiden=3"], ["model.hiden", "did you mean 'hidden'"]),
    "unknown_dataset": lambda d: (
        [CONFIG, "data.source=sklearn:nope"], ["data.source", "'sklearn:nope'", "sklearn:digits"]),
    "missing_config_file": lambda d: (
        [d / "nothere.yaml"], [str(d / "nothere.yaml"), "not found"]),
    "missing_data_file": lambda d: (
        [d / "missing_data.yaml"], ["data.path", "'nothere.csv'", "not found"]),
    "missing_search_space_file": lambda d: (
        [CONFIG, "search_space=nope/space.yaml"], ["search_space", "'nope/space.yaml'", "not found"]),
    "unknown_knob": lambda d: (
        [CONFIG, f"search_space={d / 'knob.yaml'}"], ["search_space.lrr", "did you mean 'lr'"]),
    "knob_low_not_below_high": lambda d: (
        [CONFIG, f"search_space={d / 'lo_hi.yaml'}"], ["search_space.dropout.uniform", "[0.5, 0.1]"]),
    "loguniform_not_positive": lambda d: (
        [CONFIG, f"search_space={d / 'log_zero.yaml'}"], ["search_space.lr.loguniform", "[0, 0.1]"]),
    "log1m_outside_unit_interval": lambda d: (
        [CONFIG, f"search_space={d / 'log1m.yaml'}"], ["search_space.beta1.log1m", "[0.5, 1.0]", "(0, 1)"]),
    "qloguniform_bounds_off_the_step": lambda d: (
        [CONFIG, "search_space={lr: {qloguniform: [0.001, 0.1], q: 0.003}}"],
        ["search_space.lr.qloguniform", "multiples of q=0.003", "[0.001, 0.1]"]),
    "q_on_another_distribution": lambda d: (
        [CONFIG, "search_space={lr: {loguniform: [0.001, 0.1], q: 0.001}}"],
        ["search_space.lr.q", "only qloguniform knobs take q"]),
    "base_cycle": lambda d: (
        [d / "a.yaml"], ["base", "cycle", str(d / "a.yaml"), str(d / "b.yaml")]),
    "override_without_equals": lambda d: (
        [CONFIG, "scheduler.max_epochs"], ["'scheduler.max_epochs'", "key=value"]),
    "data_one_class": lambda d: (
        [d / "one_class.yaml"], ["data.target", "'label'", "single class"]),
    # Names that become paths: one pattern and a length limit.
    "study_too_long": lambda d: (
        [CONFIG, "study=" + "s" * 300], ["study", "at most 100 characters", "(300 characters)"]),
    "study_with_a_path": lambda d: (
        [CONFIG, "study=../../elsewhere"], ["study", "'../../elsewhere'"]),
    # A file a config names may be anywhere, but an error never prints its contents.
    "search_space_not_a_space": lambda d: (
        [CONFIG, "search_space=/etc/passwd"], ["search_space: /etc/passwd holds a str, not a mapping"]),
    "search_space_directory": lambda d: (
        [CONFIG, f"search_space={d}"], ["search_space", "is a directory"]),
    "data_path_directory": lambda d: (
        [CONFIG, "data.source=null", f"data.path={d}", "data.target=y"], ["data.path", "is a directory"]),
    "pow2_bounds_not_powers": lambda d: (
        [CONFIG, f"search_space={d / 'pow2.yaml'}"],
        ["search_space.batch_size.pow2", "powers of two", "(got [10, 100])", "write [16, 64]"]),
    # The dashboard stays on loopback unless the user says otherwise, explicitly.
    "dashboard_on_every_interface": lambda d: (
        [CONFIG, "ray.dashboard_host=0.0.0.0"], ["ray.dashboard_host", "'0.0.0.0'", "ray.expose_dashboard: true"]),
    # Resources this machine cannot give one trial (an embedded sweep would wait forever).
    "more_cpus_than_the_machine": lambda d: (
        [CONFIG, "resources.cpu_per_trial=1000", "ray.num_cpus=2"],
        ["resources.cpu_per_trial: 1000 CPUs per trial, but this machine has 2 (ray.num_cpus)"]),
    "gpus_of_a_machine_without": lambda d: (
        [CONFIG, "resources.gpu_per_trial=2", "ray.num_gpus=0"],
        ["resources.gpu_per_trial: 2 GPUs per trial, but this machine has 0 (ray.num_gpus)"]),
    "dashboard_host_not_an_address": lambda d: (
        [CONFIG, "ray.dashboard_host=evil host"], ["ray.dashboard_host", "'evil host'", "IP address"]),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_files(tmp_path_factory.mktemp("cfg"))


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line(case: str, files: Path) -> None:
    args, fragments = CASES[case](files)
    assert_user_error(cli("check", *args), *fragments)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_subprocess(case: str, files: Path) -> None:
    args, fragments = CASES[case](files)
    assert_user_error(as_run(orch("check", *args, timeout=180)), *fragments)


def test_errors_never_print_a_named_file(files: Path) -> None:
    secret = files / "secret.txt"
    secret.write_text("the password is hunter2\n" * 50)  # valid YAML (one string), not a space
    for args in ([f"search_space={secret}"], ["data.source=null", f"data.path={secret}", "data.target=y"],
                 [f"search_space={files / 'one_class.csv'}"]):
        run = cli("check", CONFIG, *args)
        assert run.code == 2, run.stderr + run.detail
        assert "hunter2" not in run.stderr and "0.5,1" not in run.stderr and len(run.stderr) < 300, run.stderr


def test_dashboard_beyond_loopback_only_when_asked() -> None:
    ok = cli("check", "--config-only", CONFIG, "ray.dashboard_host=0.0.0.0", "ray.expose_dashboard=true")
    assert ok.code == 0, ok.stderr + ok.detail
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert cli("check", "--config-only", CONFIG, f"ray.dashboard_host={host}").code == 0, host


def test_config_error_names_key_and_value_in_process(files: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.val_fraction: must be in \(0, 1\) \(got 1\.5\)$"):
        config.load(CONFIG, ["data.val_fraction=1.5"])
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr' \(did you mean 'train\.lr'\?\)"):
        config.load(CONFIG, ["train.lrr=0.1"])


def test_debug_shows_traceback_in_process() -> None:
    run = cli("--debug", "check", CONFIG, "scheduler.max_epoch=5")
    assert run.code == 2
    assert "Traceback (most recent call last)" in run.stderr
    assert "ConfigError" in run.stderr
    assert run.stderr.splitlines()[-1].startswith("orch: error: ")


def test_valid_config_checks_ok() -> None:
    run = cli("check", CONFIG, "data.source=sklearn:iris", "study=iris-check")
    assert run.code == 0, run.stderr + run.detail
    assert "ok. study iris-check; 150 rows x 4 features (classification)" in run.stdout
    assert "Searches 8 knobs, 200 trials of random search under asha: lr 0.0001..0.1 (log)" in run.stdout
    assert "beta1 0.8..0.999 (log 1-x)" in run.stdout


# -- base configs and overrides -----------------------------------------------------------------


def test_base_configs_merge_and_overrides_win(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    write_yaml(tmp_path / "root.yaml", {
        "study": "root-study",
        "data": {"source": "sklearn:iris", "val_fraction": 0.25},
        "model": {"name": "mlp", "hidden": 64, "layers": 3},
        "train": {"lr": 0.01, "batch_size": 32, "optimizer": "adam"},
        "scheduler": {"name": "asha", "max_epochs": 10, "grace_period": 1},
        "search": {"num_samples": 5, "seed": 4},
    })
    # A base of a base is found relative to the file that names it.
    write_yaml(tmp_path / "shared" / "mid.yaml", {
        "base": "../root.yaml", "train": {"batch_size": 16}, "search": {"num_samples": 7},
    })
    write_yaml(tmp_path / "other.yaml", {"retune": {"max_age_days": 7}, "search": {"num_samples": 9}})
    child = write_yaml(tmp_path / "child.yaml", {
        "base": ["shared/mid.yaml", "other.yaml"],
        "study": "child-study",
        "model": {"dropout": 0.1},
        "train": {"lr": 0.02},
        "scheduler": {"max_epochs": 12},
    })

    cfg = config.load(child, ["scheduler.max_epochs=20", "train.optimizer=sgd", "model.hidden=128"])

    assert cfg.study == "child-study"
    assert cfg.source_file == str(child.resolve())
    assert cfg.data.source == "sklearn:iris"
    assert cfg.data.val_fraction == 0.25  # from the root base
    assert cfg.data.test_fraction == 0.2  # schema default
    assert cfg.model == {"name": "mlp", "hidden": 128, "layers": 3, "dropout": 0.1}  # deep merge
    assert cfg.train.lr == 0.02  # file beats its bases
    assert cfg.train.batch_size == 16  # mid beats root
    assert cfg.train.optimizer == "sgd"  # override beats everything
    assert cfg.scheduler.max_epochs == 20
    assert cfg.scheduler.grace_period == 1
    assert cfg.search.num_samples == 9  # a later base beats an earlier one
    assert cfg.search.seed == 4
    assert cfg.retune.max_age_days == 7
    assert isinstance(cfg.scheduler.max_epochs, int) and isinstance(cfg.train.lr, float)


def test_override_types_are_converted() -> None:
    cfg = config.load(CONFIG, ["search.num_samples=8", "train.lr=0.5", "train.nesterov=true",
                               "train.grad_clip=null", "model.hidden=256"])
    assert cfg.search.num_samples == 8 and isinstance(cfg.search.num_samples, int)
    assert cfg.train.lr == 0.5
    assert cfg.train.nesterov is True
    assert cfg.train.grad_clip is None
    assert cfg.model["hidden"] == 256


def test_yaml_round_trip() -> None:
    cfg = config.load(CONFIG, ["study=round-trip", "train.lr=0.003", "model.layers=3"])
    text = config.to_yaml(cfg)
    data = yaml.safe_load(text)
    assert "base" not in data and "source_file" not in data
    back = config.from_yaml(text)
    for section in ("study", "data", "model", "train", "objective", "scheduler", "search", "resources",
                    "ray", "store", "retune"):
        assert getattr(back, section) == getattr(cfg, section), section


# -- real subprocesses, started together ---------------------------------------------------------


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.Popen, Path]]:
    """A few `orch` processes, started at once so that their imports overlap.

    Between them they cover a config error, a data error and `orch sweep`; each asserts that
    nothing else reaches stdout or stderr (no import-time warnings or banners)."""
    d = make_files(tmp_path_factory.mktemp("proc"))
    store = d / "store"
    runs = {
        "debug": ["--debug", "check", CONFIG, "scheduler.max_epoch=5"],
        "sweep": ["sweep", CONFIG, "bad.key=1", "--store", store],
        "data_one_class": ["check", d / "one_class.yaml"],
    }
    started = {name: (orch_process(*args, cwd=d), d) for name, args in runs.items()}
    yield started
    for p, _ in started.values():
        if p.poll() is None:
            p.kill()
            p.wait()


def finish(procs: dict[str, tuple[subprocess.Popen, Path]], name: str) -> tuple[Run, Path]:
    p, d = procs[name]
    out, err = p.communicate(timeout=180)
    return Run(p.returncode, out, err), d


def test_subprocess_debug_shows_traceback(procs) -> None:
    run, _ = finish(procs, "debug")
    assert run.code == 2, run.stderr
    assert "Traceback (most recent call last)" in run.stderr
    assert "orchestrator.errors.ConfigError" in run.stderr
    last = run.stderr.splitlines()[-1]
    assert last == "orch: error: command line: unknown key 'scheduler.max_epoch' (did you mean 'scheduler.max_epochs'?)"
    assert run.stdout == ""


def test_subprocess_sweep_with_bad_key_writes_nothing(procs) -> None:
    run, d = finish(procs, "sweep")
    assert_user_error(run, "'bad'")
    store = d / "store"
    assert not store.exists() or not any(store.iterdir())
    assert not (d / "results").exists()  # nor the default store in the working directory


def test_subprocess_data_error(procs) -> None:
    run, _ = finish(procs, "data_one_class")
    assert_user_error(run, "data.target", "'label'", "single class")
