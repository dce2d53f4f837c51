"""Nothing orch reads from a results store runs code.

Tune's state files of a sweep are signed with a key kept outside the store and checked before a
resume restores them (orchestrator/tune/state_guard.py, orchestrator/tune/ray_adapter.py); trial
checkpoints hold tensors and plain values and load with ``weights_only=True``. The end-to-end
tests run the real CLI on a local Ray (127.0.0.1, 2 CPUs), each store with its own key file
(``ORCH_STATE_KEY_FILE``) in a temporary directory. Planted files carry a pickle whose loading
would create a marker file; the marker must never appear (and does, when the same bytes are
loaded the way Tune or torch would without orch's checks).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from orchestrator.config import schema
from orchestrator.errors import UserError
from orchestrator.tune import plan, ray_adapter, state_guard
from tests.conftest import (
    CONFIG,
    SMALL,
    finished_trials,
    kill_driver_at,
    orch,
    start_sweep,
    store_rows,
)


class Payload:
    """Unpickling it runs code: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def payload(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


def one_line_refusal(p: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 with one line on stderr (no traceback) holding every fragment."""
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- the key and the signatures ----------------------------------------------------------------


@pytest.fixture
def key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> state_guard.StateKey:
    monkeypatch.delenv(state_guard.KEY_ENV, raising=False)
    monkeypatch.setenv(state_guard.KEY_FILE_ENV, str(tmp_path / "keys" / "state.key"))
    return state_guard.load_key()


def _exp_dir(tmp_path: Path, files: dict[str, bytes],
             sweep_id: str = "20260101-000000-abcd") -> Path:
    exp = tmp_path / "store" / "_ray" / sweep_id
    exp.mkdir(parents=True)
    for name, data in files.items():
        (exp / name).write_bytes(data)
    return exp


def _verify(exp: Path, key: state_guard.StateKey, **kwargs) -> None:
    state_guard.verify(exp, key, sweep_id=exp.name, context=f"--resume: sweep {exp.name}", **kwargs)


def test_a_missing_key_file_is_created_readable_by_its_owner_only(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(state_guard.KEY_ENV, raising=False)
    monkeypatch.delenv(state_guard.KEY_FILE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    first = state_guard.load_key(tmp_path / "store")
    path = tmp_path / "home" / ".config" / "orch" / "state.key"
    assert first.where == str(path) and path.is_file()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert len(first.secret) == 32 and len(path.read_text().strip()) == 64
    assert state_guard.load_key().secret == first.secret  # created once, then read
    assert not list(path.parent.glob(".*"))  # no temporary file left


def test_key_from_the_environment_hex_or_any_string(monkeypatch) -> None:
    monkeypatch.setenv(state_guard.KEY_ENV, "ab" * 32)
    assert state_guard.load_key().secret == bytes.fromhex("ab" * 32)
    monkeypatch.setenv(state_guard.KEY_ENV, "a passphrase shared by our machines")
    assert state_guard.load_key().secret == b"a passphrase shared by our machines"
    assert state_guard.load_key().where == "$ORCH_STATE_KEY"
    monkeypatch.setenv(state_guard.KEY_ENV, "short")
    with pytest.raises(UserError, match="too short"):
        state_guard.load_key()


def test_a_key_file_inside_the_store_or_open_to_others_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(state_guard.KEY_ENV, raising=False)
    store = tmp_path / "store"
    monkeypatch.setenv(state_guard.KEY_FILE_ENV, str(store / "keys" / "state.key"))
    with pytest.raises(UserError, match="inside the results store"):
        state_guard.load_key(store)
    assert not (store / "keys").exists()
    shared = tmp_path / "shared.key"
    shared.write_text("cd" * 32)
    shared.chmod(0o644)
    monkeypatch.setenv(state_guard.KEY_FILE_ENV, str(shared))
    with pytest.raises(UserError, match="chmod 600"):
        state_guard.load_key(store)
    shared.chmod(0o600)
    assert state_guard.load_key(store).secret == bytes.fromhex("cd" * 32)


def test_signed_files_verify_and_any_change_is_refused(tmp_path, key) -> None:
    exp = _exp_dir(tmp_path, {"tuner.pkl": b"tuner", "experiment_state-1.json": b"{}",
                              "orch_sweep.yaml": b"study: x", ".hidden.tmp": b"?"})
    exp.joinpath("trial0").mkdir()
    state_guard.sign(exp, {n: exp / n for n in ("tuner.pkl", "experiment_state-1.json")}, key)
    # orch's own files, hidden files and directories are not Tune's state.
    _verify(exp, key, exempt=["orch_sweep.yaml"])

    (exp / "tuner.pkl").write_bytes(b"tuneR")
    with pytest.raises(UserError) as err:
        _verify(exp, key, exempt=["orch_sweep.yaml"])
    message = str(err.value)
    assert "\n" not in message
    assert (f"--resume: sweep {exp.name}: Tune's state file tuner.pkl is not signed by this "
            "machine's key") in message
    assert key.where in message and "ORCH_STATE_KEY" in message
    (exp / "tuner.pkl").write_bytes(b"tuner")

    (exp / "callback-states-2.pkl").write_bytes(b"new")  # a file with no signature at all
    with pytest.raises(UserError, match="callback-states-2.pkl is not signed"):
        _verify(exp, key, exempt=["orch_sweep.yaml"])
    (exp / "callback-states-2.pkl").unlink()

    with pytest.raises(UserError, match="orch_sweep.yaml is not signed"):  # exempt only when named
        _verify(exp, key)

    other = state_guard.StateKey(b"another machine's key, 32 bytes.", "elsewhere")
    with pytest.raises(UserError, match="is not signed by this machine's key"):
        _verify(exp, other, exempt=["orch_sweep.yaml"])


def test_a_signature_holds_for_its_file_name_and_sweep_only(tmp_path, key) -> None:
    exp = _exp_dir(tmp_path, {"searcher-state-1.pkl": b"state"})
    state_guard.sign(exp, {"searcher-state-1.pkl": exp / "searcher-state-1.pkl"}, key)
    signatures = (exp / state_guard.SIGNATURES_FILE).read_text()

    # Signed bytes under another name.
    shutil.copy(exp / "searcher-state-1.pkl", exp / "callback-states-1.pkl")
    doc = json.loads(signatures)
    doc["files"]["callback-states-1.pkl"] = doc["files"]["searcher-state-1.pkl"]
    (exp / state_guard.SIGNATURES_FILE).write_text(json.dumps(doc))
    with pytest.raises(UserError, match="callback-states-1.pkl is not signed"):
        _verify(exp, key)

    twin = _exp_dir(tmp_path, {"searcher-state-1.pkl": b"state"}, sweep_id="20260101-000000-ffff")
    (twin / state_guard.SIGNATURES_FILE).write_text(signatures)  # another sweep's signatures
    with pytest.raises(UserError, match="searcher-state-1.pkl is not signed"):
        _verify(twin, key)


def test_the_last_signatures_of_each_file_are_kept(tmp_path, key) -> None:
    exp = _exp_dir(tmp_path, {})
    path = exp / "experiment_state-1.json"
    versions = [f"version {i}".encode() for i in range(state_guard.HISTORY + 2)]
    for data in versions:
        path.write_bytes(data)
        state_guard.sign(exp, {path.name: path}, key)
        state_guard.sign(exp, {path.name: path}, key)  # signing the same bytes again adds nothing
    recorded = state_guard.read_signatures(exp)[path.name]
    assert len(recorded) == state_guard.HISTORY
    for i, data in enumerate(versions):
        path.write_bytes(data)  # an older copy still on disk while the newer one uploads
        if i >= len(versions) - state_guard.HISTORY:
            _verify(exp, key)
        else:
            with pytest.raises(UserError, match="not signed"):
                _verify(exp, key)


@pytest.mark.parametrize("content", [
    None, "not json", json.dumps({"files": {"tuner.pkl": ["x"]}}),
    json.dumps({"format": "orch-state-signatures", "files": {"a": "b"}})])
def test_missing_or_malformed_signatures_are_refused(tmp_path, key, content) -> None:
    exp = _exp_dir(tmp_path, {"tuner.pkl": b"tuner"})
    if content is not None:
        (exp / state_guard.SIGNATURES_FILE).write_text(content)
    with pytest.raises(UserError) as err:
        _verify(exp, key)
    expected = "no orch_state.sig" if content is None else "orch_state.sig is malformed"
    assert expected in str(err.value)
    assert "refusing to load it" in str(err.value) and "\n" not in str(err.value)


def test_a_directory_without_tune_state_is_not_restored(tmp_path) -> None:
    exp = _exp_dir(tmp_path, {"orch_sweep.yaml": b"study: x"})
    assert not ray_adapter.restorable(exp)
    (exp / "tuner.pkl").write_bytes(b"tuner")  # the driver died before Tune's first save
    assert not ray_adapter.restorable(exp)
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    assert ray_adapter.restorable(exp)


# -- checkpoints and error files -----------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_checkpoint_loads_with_weights_only_and_resumes_exactly(tmp_path, optimizer) -> None:
    from orchestrator.train import data
    from orchestrator.train.trainer import TrialSetup, load_checkpoint, run_trial

    cfg = plan.load(CONFIG)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="sklearn:iris"))
    dataset = data.load(cfg)
    base = {**schema.base_hyperparameters(cfg), "optimizer": optimizer, "momentum": 0.9,
            "lr_schedule": "plateau", "dropout": 0.2}
    setup = TrialSetup(base=base, model="mlp", metric="val_loss", mode="min", max_epochs=6,
                       report_epochs=None, checkpoint_every=1)
    path = tmp_path / "trial.pt"
    whole: list[dict] = []

    def report(result, checkpoint):
        whole.extend(result["history"])
        if result["epoch"] == 3:
            torch.save(checkpoint, path)  # as tune_trainable does, at the report

    run_trial({}, dataset, setup, report)
    state = load_checkpoint(str(path))  # weights_only=True
    resumed: list[dict] = []
    run_trial({}, dataset, setup, lambda result, _: resumed.extend(result["history"]), state=state)
    assert [m["epoch"] for m in resumed] == [4, 5, 6]
    # The same random streams too: the same numbers.
    assert [m["val_loss"] for m in resumed] == [m["val_loss"] for m in whole[3:]]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # (the raw pickle, on purpose)
def test_a_checkpoint_holding_a_pickled_object_is_refused_not_run(tmp_path) -> None:
    from orchestrator.train.trainer import CheckpointError, load_checkpoint

    marker = tmp_path / "ran"
    planted = tmp_path / "trial.pt"
    torch.save({"model": Payload(marker), "epoch": 3}, planted)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(payload(marker))
    for path in (planted, raw):
        with pytest.raises(CheckpointError, match="refusing to load checkpoint"):
            load_checkpoint(str(path))
        assert not marker.exists()
    torch.load(planted, weights_only=False)  # what a pickle load would do
    assert marker.exists()


def test_a_trials_pickled_error_is_never_unpickled(tmp_path) -> None:
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment.trial import Trial
    from ray.tune.result_grid import ResultGrid

    ray_adapter.install()
    storage = StorageContext(storage_path=str(tmp_path / "store" / "_ray"), experiment_dir_name="s",
                             trial_dir_name="t1")
    trial = Trial("orch", config={}, storage=storage, stub=True, trial_id="t1")
    trial.run_metadata.pickled_error_filename = "error.pkl"
    Path(storage.trial_fs_path).mkdir(parents=True)
    marker = tmp_path / "ran"
    (Path(storage.trial_fs_path) / "error.pkl").write_bytes(payload(marker))
    trial.set_status(Trial.ERROR)
    assert ResultGrid._populate_exception(trial) is None  # what the result grid reads for an error
    assert not marker.exists()


# -- end to end: a sweep resumed through the CLI ---------------------------------------------

TINY = [*SMALL, "search.num_samples=3"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, str, dict[str, str]]:
    """A finished sweep of 3 trials whose sweeps row is removed: to --resume, it is interrupted."""
    root = tmp_path_factory.mktemp("signed")
    env = {"ORCH_STATE_KEY_FILE": str(root / "keys" / "state.key"), "ORCH_STATE_KEY": ""}
    store = root / "store"
    p = orch("sweep", CONFIG, *TINY, "--store", store, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    shutil.rmtree(store / "sweeps")
    (sweep_id,) = [d.name for d in (store / "_ray").iterdir()]
    return store, sweep_id, env


def _copy(swept, tmp_path: Path) -> tuple[Path, Path]:
    store, sweep_id, _ = swept
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    return copy, copy / "_ray" / sweep_id


def _resume(store: Path, sweep_id: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return orch("sweep", CONFIG, *TINY, "--resume", sweep_id, "--store", store, env=env)


def _newest(exp: Path, pattern: str) -> Path:
    return max(exp.glob(pattern))


def test_a_sweep_signs_every_tune_state_file_it_writes(swept) -> None:
    store, sweep_id, env = swept
    exp = store / "_ray" / sweep_id
    recorded = state_guard.read_signatures(exp)
    assert {"tuner.pkl"} | {p.name for p in exp.glob("experiment_state-*.json")} <= set(recorded)
    assert any(n.startswith("searcher-state-") for n in recorded)  # orch's own searcher, pickled
    assert any(n.startswith("search_gen_state-") for n in recorded)
    key = state_guard.StateKey(bytes.fromhex(Path(env["ORCH_STATE_KEY_FILE"]).read_text()), "test")
    _verify(exp, key, exempt=["orch_sweep.yaml", "orch_status.json", "stages.json"])
    assert store.resolve() not in Path(env["ORCH_STATE_KEY_FILE"]).resolve().parents


def test_a_planted_tuner_pkl_is_refused_before_it_is_read(swept, tmp_path) -> None:
    store, exp = _copy(swept, tmp_path)
    marker = tmp_path / "ran"
    (exp / "tuner.pkl").write_bytes(payload(marker))
    p = _resume(store, exp.name, swept[2])
    one_line_refusal(p, f"--resume: sweep {exp.name}: Tune's state file tuner.pkl is not signed "
                        "by this machine's key", "ORCH_STATE_KEY", swept[2]["ORCH_STATE_KEY_FILE"])
    assert not marker.exists()

    from ray import cloudpickle

    cloudpickle.loads((exp / "tuner.pkl").read_bytes())  # what Tuner.restore does with it
    assert marker.exists()


@pytest.mark.slow
def test_a_tampered_experiment_state_is_refused(swept, tmp_path) -> None:
    from ray._common.utils import binary_to_hex
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    store, exp = _copy(swept, tmp_path)
    marker = tmp_path / "ran"
    state_file = _newest(exp, "experiment_state-*.json")
    state = json.loads(state_file.read_text())
    state["runner_data"]["_extra"] = {"_type": "CLOUDPICKLE_FALLBACK",
                                      "value": binary_to_hex(payload(marker))}
    state_file.write_text(json.dumps(state))
    p = _resume(store, exp.name, swept[2])
    one_line_refusal(p, f"Tune's state file {state_file.name} is not signed")
    assert not marker.exists()

    _loads_with_cloudpickle(state_file.read_bytes())  # what Tune's resume does with it
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["searcher-state-2099-01-01_00-00-00.pkl",
                                  "callback-states-2099-01-01_00-00-00.pkl"])
def test_a_planted_searcher_or_callback_state_is_refused(swept, tmp_path, name) -> None:
    from ray.tune.utils.util import _load_newest_checkpoint

    store, exp = _copy(swept, tmp_path)
    marker = tmp_path / "ran"
    (exp / name).write_bytes(payload(marker))  # the newest name: the one Tune would restore
    p = _resume(store, exp.name, swept[2])
    one_line_refusal(p, f"Tune's state file {name} is not signed")
    assert not marker.exists()

    _load_newest_checkpoint(str(exp), name.split("2099")[0] + "*.pkl")  # Tune's own reader
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("content", [None, "{"])
def test_a_sweep_without_valid_signatures_is_not_resumed(swept, tmp_path, content) -> None:
    store, exp = _copy(swept, tmp_path)
    if content is None:
        (exp / state_guard.SIGNATURES_FILE).unlink()
    else:
        (exp / state_guard.SIGNATURES_FILE).write_text(content)
    p = _resume(store, exp.name, swept[2])
    one_line_refusal(p, f"--resume: sweep {exp.name}: ", "orch_state.sig", "refusing to load it")


@pytest.mark.slow
def test_another_machines_key_is_refused(swept, tmp_path) -> None:
    store, exp = _copy(swept, tmp_path)
    p = _resume(store, exp.name, {"ORCH_STATE_KEY": "ef" * 32})
    one_line_refusal(p, "is not signed by this machine's key", "The key is $ORCH_STATE_KEY")


# A sitecustomize module for the orch process: its first ORCH_SKIPPED_CHECKS signature checks pass
# without looking, as if a file were replaced right after them. (The variable is taken out of the
# environment at once: the processes orch starts check as usual.)
SKIPPING_FIRST_CHECKS = """
import os

skipped = int(os.environ.pop("ORCH_SKIPPED_CHECKS", "0"))
if skipped:
    from orchestrator.tune import state_guard

    real, calls = state_guard.verify, []

    def verify(*args, **kwargs):
        calls.append(args[0])
        if len(calls) > skipped:
            return real(*args, **kwargs)

    state_guard.verify = verify
"""


@pytest.mark.slow
@pytest.mark.parametrize("skipped", [2, 3], ids=["at-tunes-resume", "on-the-staging-copies"])
def test_a_file_replaced_after_the_first_checks_is_refused_as_tune_reads_it(swept, tmp_path,
                                                                           skipped) -> None:
    # orch checks before Ray starts (1) and before Tuner.restore (2); inside Tune, before the
    # experiment state is read (3) and on the copies Tune unpickles the searcher from (4).
    store, exp = _copy(swept, tmp_path)
    marker = tmp_path / "ran"
    name = "searcher-state-2099-01-01_00-00-00.pkl"
    (exp / name).write_bytes(payload(marker))
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SKIPPING_FIRST_CHECKS)
    path = os.pathsep.join(d for d in (str(hooks), os.environ.get("PYTHONPATH")) if d)
    p = orch("sweep", CONFIG, *TINY, "--resume", exp.name, "--store", store, timeout=240,
             env={**swept[2], "PYTHONPATH": path, "ORCH_SKIPPED_CHECKS": str(skipped)})
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"Sweep {exp.name} of " in p.stdout  # past the first checks: Ray started, the sweep ran
    refusal = f"orch: error: --resume: sweep {exp.name}: Tune's state file {name} is not signed"
    assert refusal in p.stderr
    assert "Traceback" not in p.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_a_tuner_pkl_without_experiment_state_is_never_read(swept, tmp_path) -> None:
    # The driver died between creating the Tuner and Tune's first save: nothing to restore, the
    # sweep starts afresh (and writes tuner.pkl again).
    store, sweep_id, env = swept
    fresh = tmp_path / "store"
    exp = fresh / "_ray" / sweep_id
    exp.mkdir(parents=True)
    shutil.copy(store / "_ray" / sweep_id / "orch_sweep.yaml", exp)
    marker = tmp_path / "ran"
    (exp / "tuner.pkl").write_bytes(payload(marker))
    p = _resume(fresh, sweep_id, env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not marker.exists()
    assert len(pd.read_parquet(fresh / "trials")) == 3


# -- end to end: a driver killed mid-sweep ---------------------------------------------------


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_planted_checkpoints_never_run(tmp_path) -> None:
    env = {"ORCH_STATE_KEY_FILE": str(tmp_path / "keys" / "state.key"), "ORCH_STATE_KEY": ""}
    store = tmp_path / "store"
    args = [*SMALL, "scheduler.name=fifo", "scheduler.max_epochs=12", "search.num_samples=8",
            "train.checkpoint_every=2", "model.hidden=32", "--store", str(store)]

    def saved_mid_sweep() -> bool:
        # Two trials finished, not all, and a running one's checkpoint recorded in Tune's state.
        states = list((store / "_ray").glob("*/experiment_state-*.json"))
        return (2 <= finished_trials(store) < 8 and bool(states)
                and "checkpoint_0" in max(states).read_text())

    # No chance to clean up, at any moment of a save.
    kill_driver_at(start_sweep(args, env=env), saved_mid_sweep)
    before = store_rows(store, "trials")
    assert 2 <= len(before) < 8
    (sweep_id,) = [d.name for d in (store / "_ray").iterdir()]

    # Resumed first with every trial checkpoint a pickled object, then as it was.
    kept = tmp_path / "kept"
    shutil.copytree(store, kept)
    marker = tmp_path / "ran"
    for trial_dir in (d for d in (store / "_ray" / sweep_id).iterdir() if d.is_dir()):
        # Those on disk, and any Tune's state may name: with one checkpoint kept per trial, a kill
        # can come between the deletion of the previous one and the save naming the next.
        for index in range(8):
            path = trial_dir / f"checkpoint_{index:06d}" / "trial.pt"
            path.parent.mkdir(exist_ok=True)
            torch.save({"model": Payload(marker), "epoch": 2}, path)
    p = orch("sweep", CONFIG, *args, "--resume", sweep_id, env=env)
    assert p.returncode in (0, 1), p.stdout + p.stderr
    assert not marker.exists()
    trials = store_rows(store, "trials")
    refused = trials[trials["stop_reason"].fillna("").str.contains("refusing to load checkpoint")]
    assert len(refused) >= 1, trials[["status", "stop_reason"]]
    assert set(refused["status"]) == {"error"}
    assert len(trials) == 8 and trials["trial_id"].is_unique

    shutil.rmtree(store)
    shutil.copytree(kept, store)
    # On another machine, the key of the one that started the sweep, shared through the environment.
    shared = {"ORCH_STATE_KEY": Path(env["ORCH_STATE_KEY_FILE"]).read_text().strip(),
              "ORCH_STATE_KEY_FILE": str(tmp_path / "other-machine.key")}
    p = orch("sweep", CONFIG, *args, "--resume", sweep_id, env=shared)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Resuming sweep" in p.stdout
    after = store_rows(store, "trials")
    assert len(after) == 8 and after["trial_id"].is_unique  # each trial once
    assert set(before["trial_id"]) <= set(after["trial_id"])
    # (A trial may fail to restore when the kill came between the deletion of its checkpoint and
    # the save naming the next, a limit of Tune's retention; never over a signature.)
    assert not after["stop_reason"].fillna("").str.contains("refusing|not signed").any()
    assert not store_rows(store, "metrics").duplicated(["trial_id", "epoch"]).any()
    assert not (tmp_path / "other-machine.key").exists()
