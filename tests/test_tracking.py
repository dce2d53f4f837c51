"""Experiment tracking: real sweeps written to MLflow and TensorBoard by the driver, read back with
MLflow's own client and TensorBoard's own event reader; the user's own Ray Tune callbacks; and the
config's errors (a missing extra, a bad callback), one line and exit 2 before Ray starts.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import (
    CONFIG,
    ROOT,
    SMALL,
    as_run,
    assert_user_error,
    cli,
    finished_trials,
    kill_driver_at,
    orch,
    orch_env,
    orch_process,
)

# A user's callback, in a module of a directory on PYTHONPATH: one line per finished trial.
CALLBACKS = '''
import json
import os

from ray.tune import Callback


class Recorder(Callback):
    def on_trial_complete(self, iteration, trials, trial, **info):
        with open(os.environ["RECORDER_FILE"], "a") as f:
            f.write(json.dumps({"trial_id": trial.trial_id, "pid": os.getpid()}) + "\\n")


class NeedsArguments(Callback):
    def __init__(self, path):
        self.path = path


class NotACallback:
    pass


def function():
    pass
'''

TRACKED = ["tracking.mlflow=true", "tracking.tensorboard=true", "callbacks=[user_callbacks:Recorder]"]
# Four trials of SGD without clipping, under ASHA; the first has a learning rate that diverges in
# its first epoch (as in tests/test_sweep.py): its run fails, the others finish or are stopped early.
SWEEP = [*SMALL, "scheduler.max_epochs=3", "search.num_samples=4", "train.optimizer=sgd", "train.grad_clip=null",
         "search.points_to_evaluate=[{lr: 100000.0, batch_size: 16}]"]
RUN_STATUS = {"completed": "FINISHED", "stopped_early": "KILLED", "diverged": "FAILED", "error": "FAILED"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory holding the user's callback module (on PYTHONPATH for the sweep)."""
    d = tmp_path / "project"
    d.mkdir()
    (d / "user_callbacks.py").write_text(CALLBACKS)
    return d


def env_for(project: Path, tmp_path: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(project), "RECORDER_FILE": str(tmp_path / "recorded.jsonl")}


def tracking_warnings(stderr: str) -> list[str]:
    """orch's warnings about tracking (a diverging trial's NumPy warnings are others)."""
    return [ln for ln in stderr.splitlines() if "warning" in ln and ("mlflow" in ln or "tensorboard" in ln)]


def mlflow_client(store: Path) -> Any:
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=f"sqlite:///{store.resolve() / 'mlruns' / 'mlflow.db'}")


def sweep_runs(store: Path, study: str = "test-iris") -> tuple[Any, Any, list[Any]]:
    """(client, parent run, trial runs) of the store's one sweep, as MLflow's client reads them."""
    client = mlflow_client(store)
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents[0], children


def table(store: Path, name: str) -> Any:
    """A table of the store, as orch's own reader gives it (``config.<knob>`` columns)."""
    from orchestrator.store.tables import Store

    return Store(store).read(name)


def epochs_in_store(store: Path) -> dict[str, list[int]]:
    metrics = table(store, "metrics")
    return {t: sorted(int(e) for e in g["epoch"]) for t, g in metrics.groupby("trial_id")}


def event_scalars(directory: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return acc


def hparams_of(acc: Any) -> tuple[dict[str, Any], int]:
    """(hyperparameters, end status) of the hparams plugin's session in a trial's event files."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = acc.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    end = HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    values = {k: (v.string_value if v.WhichOneof("kind") == "string_value" else v.number_value)
              for k, v in start.hparams.items()}
    return values, end.status


@pytest.mark.slow
def test_a_sweep_is_tracked_in_mlflow_and_tensorboard_and_runs_the_users_callbacks(
        store: Path, project: Path, tmp_path: Path) -> None:
    p = orch("sweep", CONFIG, *SWEEP, *TRACKED, "--store", store, env=env_for(project, tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and not tracking_warnings(p.stderr), p.stderr
    trials = table(store, "trials").set_index("trial_id")
    sweep = table(store, "sweeps").iloc[0]
    sweep_id = sweep["sweep_id"]
    assert len(trials) == 4 and "diverged" in set(trials["status"])
    epochs = epochs_in_store(store)
    assert f"MLflow: run {sweep_id} of experiment 'test-iris' (mlflow ui --backend-store-uri sqlite:///" in p.stdout
    assert f"TensorBoard: tensorboard --logdir {(store / 'tensorboard' / 'test-iris' / sweep_id).resolve()}" in p.stdout

    # MLflow: one parent run for the sweep, one nested run per trial.
    client, parent, children = sweep_runs(store)
    assert parent.info.run_name == sweep_id and parent.info.status == "FINISHED"
    assert {k: parent.data.tags.get(k) for k in ("study", "sweep_id", "scheduler", "searcher")} == {
        "study": "test-iris", "sweep_id": sweep_id, "scheduler": "asha", "searcher": "random"}
    params = parent.data.params
    assert params["scheduler.max_epochs"] == "3" and params["train.optimizer"] == "sgd"
    assert params["train.momentum"] == "0.9" and params["data.source"] == "sklearn:iris"
    assert "train.lr" not in params and "model.hidden" not in params  # searched: the trials' runs have them
    assert parent.data.tags["best_trial_id"] == sweep["best_trial_id"]
    assert parent.data.metrics["best_val_loss"] == pytest.approx(sweep["best_value"])
    artefacts = {a.path for a in client.list_artifacts(parent.info.run_id, "model")}
    assert {"model/weights.pt", "model/model.json"} <= artefacts  # the best trial's model

    assert sorted(r.info.run_name for r in children) == sorted(trials.index)
    for run in children:
        trial_id = run.info.run_name
        row = trials.loc[trial_id]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["trial_id"] == trial_id and run.data.tags["sweep_id"] == sweep_id
        assert float(run.data.params["lr"]) == pytest.approx(row["config.lr"])
        assert int(run.data.params["batch_size"]) == row["config.batch_size"]
        assert int(run.data.params["hidden"]) == row["config.hidden"]
        assert "momentum" not in run.data.params  # fixed: the parent's
        assert run.info.status == RUN_STATUS[row["status"]]
        assert run.data.tags["status"] == row["status"]
        assert run.data.tags["stop_reason"] == (row["stop_reason"] or "")
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == epochs[trial_id]
        if row["status"] != "diverged":
            assert run.data.metrics["best_val_loss"] == pytest.approx(row["best_val_loss"])

    # TensorBoard: each trial's scalars by epoch, and its session for the HParams tab.
    root = store / "tensorboard" / "test-iris" / sweep_id
    assert sorted(d.name for d in root.iterdir()) == sorted(trials.index)
    for trial_id, row in trials.iterrows():
        acc = event_scalars(root / trial_id)
        assert [e.step for e in acc.Scalars("train_loss")] == epochs[trial_id]
        values, status = hparams_of(acc)
        assert values["lr"] == pytest.approx(row["config.lr"]) and values["status"] == row["status"]
        assert status == (2 if row["status"] == "diverged" else 1)  # STATUS_FAILURE, STATUS_SUCCESS
        if row["status"] != "diverged":
            best = acc.Scalars("hparam/best_val_loss")[-1].value
            assert best == pytest.approx(row["best_val_loss"], rel=1e-6)

    # The user's callback ran in the driver, once per trial.
    recorded = [json.loads(line) for line in (tmp_path / "recorded.jsonl").read_text().splitlines()]
    assert sorted(r["trial_id"] for r in recorded) == sorted(trials.index)
    assert len({r["pid"] for r in recorded}) == 1  # (the driver's process)


@pytest.mark.slow
def test_a_resumed_sweep_reuses_its_mlflow_run(store: Path, project: Path, tmp_path: Path) -> None:
    args = [*SMALL, "scheduler.name=fifo", "scheduler.max_epochs=8", "search.num_samples=6",
            "train.checkpoint_every=2", "model.hidden=32", *TRACKED, "--store", str(store)]
    proc = orch_process("sweep", CONFIG, *args, env=env_for(project, tmp_path), merge_stderr=True,
                        new_session=True)
    kill_driver_at(proc, lambda: 2 <= finished_trials(store) < 6)
    p = orch("sweep", CONFIG, *args, "--resume", env=env_for(project, tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Resuming sweep" in p.stdout and not tracking_warnings(p.stderr), p.stderr

    trials = table(store, "trials").set_index("trial_id")
    assert len(trials) == 6
    client, parent, children = sweep_runs(store)  # (one parent: the resume found it)
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == sorted(trials.index)  # one run per trial
    epochs = epochs_in_store(store)
    for run in children:
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert steps == epochs[run.info.run_name] == list(range(1, 9))  # every epoch once
    recorded = {json.loads(line)["trial_id"] for line in (tmp_path / "recorded.jsonl").read_text().splitlines()}
    assert recorded == set(trials.index)  # the callback ran in both drivers


@pytest.mark.slow
def test_a_tracking_error_is_one_warning_and_the_sweep_goes_on(store: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    p = orch("sweep", CONFIG, *SMALL, "search.num_samples=2", "scheduler.max_epochs=2",
             f"tracking.mlflow.uri=sqlite:///{blocker}/mlflow.db", "--store", store)
    assert p.returncode == 0, p.stdout + p.stderr
    warnings = tracking_warnings(p.stderr)
    assert len(warnings) == 1 and warnings[0].startswith("orch: warning: mlflow tracking stopped: "), p.stderr
    assert "Traceback" not in p.stderr
    assert len(table(store, "trials")) == 2 and "Best trial" in p.stdout


# -- in-process: the trackers under Tune's hooks, with trials as Tune gives them ----------------------


class StandInTrial(SimpleNamespace):
    """What the trackers read of a Tune trial: id, sampled config, status and last result."""

    def __init__(self, trial_id: str, config: dict[str, Any]) -> None:
        super().__init__(trial_id=trial_id, config=config, status="RUNNING", last_result={})

    def report(self, callbacks: list[Any], *epochs: int, final: bool = False) -> None:
        history = [{"epoch": e, "generation": 0, "timestamp": 1.8e9 + e, "train_loss": 1.0 / e,
                    "val_loss": 2.0 / e, "val_accuracy": 0.1 * e, "lr": self.config["lr"]} for e in epochs]
        result = {"history": history, "val_loss": history[-1]["val_loss"], "epoch": epochs[-1], "final": final,
                  "trial_status": "completed" if final else "running", "stop_reason": "",
                  "best": {"val_loss": 2.0 / epochs[-1], "val_accuracy": 0.1 * epochs[-1]}, "best_epoch": epochs[-1]}
        for cb in callbacks:
            cb.on_trial_result(0, [], self, result)
        self.last_result = {k: v for k, v in result.items() if k != "history"}

    def complete(self, callbacks: list[Any]) -> None:
        self.status = "TERMINATED"
        for cb in callbacks:
            cb.on_trial_complete(0, [], self)


def test_trackers_write_a_sweep_and_a_resumed_one_reuses_its_runs(tmp_path: Path) -> None:
    import pickle

    from orchestrator.config.schema import SweepConfig, TrackingConfig
    from orchestrator.tune import tracking

    store = tmp_path / "store"
    cfg = SweepConfig(study="test-iris", tracking=TrackingConfig(mlflow=True, tensorboard=True))
    a, b = StandInTrial("aaaa1111", {"lr": 0.1, "_stage": 1}), StandInTrial("bbbb2222", {"lr": 0.01})
    # The first driver: trial a completes, b is still running when the sweep is interrupted.
    first = tracking.trackers(cfg, store, "sweep-1", ["lr"])
    first = [pickle.loads(pickle.dumps(cb)) for cb in first]  # (as Tune keeps them in tuner.pkl)
    for cb in first:
        cb.setup()
    a.report(first, 1, 2)
    b.report(first, 1, 2)
    a.report(first, 3, final=True)
    a.complete(first)
    for cb in first:
        cb.on_experiment_end([a, b])
    client, parent, children = sweep_runs(store)
    assert parent.info.status == "KILLED" and parent.info.run_name == "sweep-1"
    assert {r.info.run_name: r.info.status for r in children} == {"aaaa1111": "FINISHED", "bbbb2222": "KILLED"}
    # The resumed driver: b runs again from its checkpoint at epoch 1 (epoch 2 is reported again).
    b.status = "RUNNING"
    second = tracking.trackers(cfg, store, "sweep-1", ["lr"])
    for cb in second:
        cb.setup()
    b.report(second, 2, 3, final=True)
    b.complete(second)
    for cb in second:
        cb.on_experiment_end([a, b])
    model = tmp_path / "models" / "aaaa1111"
    model.mkdir(parents=True)
    (model / "weights.pt").write_bytes(b"weights")
    lines: list[str] = []
    result = SimpleNamespace(sweep_id="sweep-1", best_trial_id="aaaa1111", best_value=0.6667, metric="val_loss",
                             promoted=True, models=[model])
    tracking.after_sweep(cfg, store, result, lines.append)

    client, parent, children = sweep_runs(store)  # one parent run still: the resume reused it
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial_id"] == "aaaa1111"
    assert parent.data.metrics["best_val_loss"] == pytest.approx(0.6667)
    assert [f.path for f in client.list_artifacts(parent.info.run_id, "model")] == ["model/weights.pt"]
    runs = {r.info.run_name: r for r in children}
    assert sorted(runs) == ["aaaa1111", "bbbb2222"]  # ... and its trials' runs
    for run in runs.values():
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3]
        assert run.data.metrics["best_val_loss"] == pytest.approx(2 / 3)
    assert runs["aaaa1111"].data.params == {"lr": "0.1"}
    assert lines[0].startswith("MLflow: run sweep-1 of experiment 'test-iris' (mlflow ui --backend-store-uri")
    tensorboard = (store / "tensorboard" / "test-iris" / "sweep-1").resolve()
    assert lines[1] == f"TensorBoard: tensorboard --logdir {tensorboard}"

    for trial in (a, b):
        acc = event_scalars(tensorboard / trial.trial_id)
        assert [e.step for e in acc.Scalars("val_loss")] == [1, 2, 3]  # (TensorBoard drops the repeated epoch)
        assert acc.Scalars("hparam/best_val_loss")[-1].value == pytest.approx(2 / 3)
        values, status = hparams_of(acc)
        assert values == {"lr": pytest.approx(trial.config["lr"]), "status": "completed"} and status == 1


# -- in-process: the trackers' guard ----------------------------------------------------------------


def test_a_tracker_error_warns_once_and_turns_the_tracker_off(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.tune import tracking

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    tracker = tracking.MlflowTracker(f"sqlite:///{blocker}/mlflow.db", None, "exp", "sweep-1", {}, {})
    trial = SimpleNamespace(trial_id="t1", config={"lr": 0.1}, last_result={}, status="TERMINATED")
    tracker.setup()
    tracker.on_trial_result(1, [trial], trial, {"history": [{"epoch": 1, "val_loss": 0.5}]})
    tracker.on_trial_complete(1, [trial], trial)
    tracker.on_experiment_end([trial])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("orch: warning: mlflow tracking stopped: "), err
    assert "the sweep goes on" in err[0]


def test_trackers_pickle_without_their_clients(tmp_path: Path) -> None:
    # Tune pickles its callbacks into the sweep's state (tuner.pkl): settings only.
    import pickle

    from orchestrator.tune import tracking

    tracker = tracking.MlflowTracker(f"sqlite:///{tmp_path}/m.db", None, "exp", "sweep-1", {"study": "s"}, {"a": "1"})
    tracker._client = object()  # (unpicklable state of a running sweep)
    copy = pickle.loads(pickle.dumps(tracker))
    assert copy._client is None and copy.params == {"a": "1"} and copy.sweep_id == "sweep-1"
    tb = pickle.loads(pickle.dumps(tracking.TensorboardTracker(str(tmp_path))))
    assert tb.root == str(tmp_path) and tb._writers == {}


# -- the config: its keys, the extras, the callbacks --------------------------------------------------


@pytest.mark.parametrize(("override", "fragments"), [
    ("tracking.mlflow.urii=x", ["tracking.mlflow.urii: unknown key (did you mean 'uri'?)"]),
    ("tracking.mlflow=3", ["tracking.mlflow: true, false, or a mapping of uri, experiment (got 3)"]),
    ("tracking.tensorboard.dir=''", ["tracking.tensorboard.dir: a non-empty string"]),
    ("tracking.wandb=true", ["unknown key 'tracking.wandb'", "mlflow, tensorboard"]),
])
def test_tracking_keys_are_checked(override: str, fragments: list[str]) -> None:
    assert_user_error(cli("check", CONFIG, *SMALL, override, "--config-only"), *fragments)


@pytest.mark.parametrize("package", ["mlflow", "tensorboard"])
def test_a_tracker_whose_package_is_missing_is_a_one_line_error(package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed: `import mlflow` raises
    line = assert_user_error(cli("check", CONFIG, *SMALL, f"tracking.{package}=true", "--config-only"))
    assert line == (f"orch: error: tracking.{package}: the {package} package is not installed; "
                    f"pip install 'orch[{package}]'")
    monkeypatch.delitem(sys.modules, package)
    assert cli("check", CONFIG, *SMALL, f"tracking.{package}=true", "--config-only").code == 0


def test_a_sweep_asking_for_a_missing_package_stops_at_its_config(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    # (Were the config not checked, the sweep would fail on joining a cluster at a closed port: no Ray starts here.)
    run = cli("sweep", CONFIG, *SMALL, "tracking.mlflow=true", "ray.address=127.0.0.1:9", "--store", tmp_path / "store")
    assert_user_error(run, "tracking.mlflow: the mlflow package is not installed; pip install 'orch[mlflow]'")
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_a_sweep_asking_for_a_missing_package_stops_before_ray_starts(tmp_path: Path) -> None:
    # `orch sweep` as a process whose `import mlflow` fails, as where the extra is not installed.
    wrapper = ("import runpy, sys; sys.modules['mlflow'] = None; "
               "sys.argv[0] = 'orch'; runpy.run_module('orchestrator', run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", wrapper, "sweep", str(CONFIG), *SMALL, "tracking.mlflow=true",
                        "--store", str(tmp_path / "store")], cwd=ROOT, env=orch_env(), text=True,
                       capture_output=True, timeout=120)
    run = as_run(p)
    assert_user_error(run, "tracking.mlflow: the mlflow package is not installed; pip install 'orch[mlflow]'")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(("spec", "fragments"), [
    ("no_such_module:Recorder", ["callbacks[1]: no module named 'no_such_module'", "(got 'no_such_module:Recorder')"]),
    ("user_callbacks:Missing", ["callbacks[1]: module 'user_callbacks' has no 'Missing'"]),
    ("user_callbacks:NotACallback", ["callbacks[1]: is the class NotACallback, not a subclass of ray.tune.Callback",
                                     "(got 'user_callbacks:NotACallback')"]),
    ("user_callbacks:function", ["callbacks[1]: is a function, not a subclass of ray.tune.Callback"]),
    ("user_callbacks:NeedsArguments", ["callbacks[1]: NeedsArguments must take no arguments",
                                       "(got 'user_callbacks:NeedsArguments')"]),
    ("not a path", ["callbacks[1]: expected an import path", "(got 'not a path')"]),
])
def test_a_bad_callback_is_a_one_line_error(spec: str, fragments: list[str], project: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(project))
    run = cli("check", CONFIG, *SMALL, f"callbacks=[user_callbacks:Recorder, '{spec}']", "--config-only")
    assert_user_error(run, *fragments)


def test_good_callbacks_pass_the_check(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(project))
    run = cli("check", CONFIG, *SMALL, "callbacks=[user_callbacks:Recorder]", "--config-only")
    assert run.code == 0, run.stderr + run.detail


def test_the_default_mlflow_store_is_inside_a_local_results_store(tmp_path: Path) -> None:
    from orchestrator.config.schema import MlflowConfig
    from orchestrator.tune.tracking import mlflow_target

    uri, artefacts = mlflow_target(MlflowConfig(), tmp_path / "results")
    assert uri == f"sqlite:///{(tmp_path / 'results').resolve()}/mlruns/mlflow.db"
    assert artefacts == ((tmp_path / "results").resolve() / "mlruns" / "artifacts").as_uri()
    assert mlflow_target(MlflowConfig(uri="http://127.0.0.1:5000"), tmp_path) == ("http://127.0.0.1:5000", None)
