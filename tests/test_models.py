"""The tuned model: best weights per trial, artefacts, load_model, orch export / predict / fit.

One real sweep (local Ray, a table with categories and missing values) feeds every test of the
module; each test that writes works on its own copy of the store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from orchestrator.examples.tables import mixed_classification
from orchestrator.store.tables import Store
from orchestrator.store.trials import ranked
from orchestrator.train import data as data_mod
from orchestrator.train.losses import binary_cross_entropy, cross_entropy
from orchestrator.tune import artefacts
from tests.conftest import CONFIG, as_run, assert_user_error, cli, orch

STUDY = "test-mixed"


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """(store, the table's CSV, the table) after one small sweep that keeps 2 models."""
    base = tmp_path_factory.mktemp("models")
    frame = mixed_classification(600, seed=1)
    csv = base / "mixed.csv"
    frame.to_csv(csv, index=False)
    store = base / "store"
    p = orch("sweep", CONFIG, f"study={STUDY}", "ray.num_cpus=2", "data.source=null", f"data.path={csv}",
             "data.target=label", "scheduler.max_epochs=6", "scheduler.grace_period=2", "search.num_samples=4",
             "store.keep_models=2", "--store", store)
    assert p.returncode == 0, p.stderr
    assert "Model: " in p.stdout
    return store, csv, frame


def copy_store(swept: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(swept[0], store, symlinks=True)
    return store


def test_a_sweep_keeps_its_best_trials_models_and_promotes_the_best(swept) -> None:
    store, _, _ = swept
    trials = Store(store).trials(STUDY)
    sweep_id = trials["sweep_id"].iloc[0]
    kept = sorted(p.name for p in (store / "models" / STUDY / sweep_id).iterdir())
    top = ranked(trials[trials["status"].isin(["completed", "stopped_early"])], "best_val_loss", "min")
    assert kept == sorted(top["trial_id"].head(2))
    assert not (store / "_ray" / sweep_id / "weights").exists()  # the others' weights are gone
    best = top.iloc[0]
    link = store / "best" / STUDY
    assert link.is_symlink() and (link / "model" / "model.json").is_file() and (link / "best.yaml").is_file()
    record = json.loads((link / "model" / "model.json").read_text())["record"]
    assert record["trial_id"] == best["trial_id"] and record["epoch"] == best["best_epoch"]
    assert record["objective"] == pytest.approx(best["best_val_loss"])
    # The artefact's scores, computed from the kept weights, are the trial's recorded ones: the
    # weights are those of the epoch the trial was chosen by.
    assert record["scores"]["val"]["val_loss"] == pytest.approx(best["best_val_loss"], rel=1e-6)
    assert record["scores"]["test"]["test_accuracy"] == pytest.approx(best["test_accuracy"], abs=1e-9)
    assert best["n_params"] > 0 and 1 <= best["best_epoch"] <= best["epochs"]


def test_the_exported_model_predicts_in_a_fresh_process_what_its_test_scores_say(swept, tmp_path: Path) -> None:
    store, csv, frame = swept
    out = tmp_path / "exported"
    r = cli("export", STUDY, "--out", out, "--store", store)
    assert r.code == 0, r.stderr + r.detail
    assert "torchscript: model.torchscript.pt" in r.stdout and "onnx: model.onnx" in r.stdout  # (dev extra: onnx)
    record = json.loads((out / "model.json").read_text())["record"]
    # The test rows of the sweep's own split, raw, as the user has them (strings, gaps and all).
    cfg_rows = data_mod.prepare(pd.read_csv(csv), "label", "classification", seed=0).rows["test"]
    raw = pd.read_csv(csv).loc[cfg_rows]
    raw.drop(columns="label").to_csv(tmp_path / "test.csv", index=False)
    shutil.rmtree(store.parent / "moved", ignore_errors=True)
    code = (
        "import sys, pandas as pd, orchestrator as orch\n"
        "m = orch.load_model(sys.argv[1])\n"
        "p = m.predict(pd.read_csv(sys.argv[2]))\n"
        "p.to_csv(sys.argv[3], index=False)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "test.csv"), str(tmp_path / "p.csv")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "ORCH_STORE": str(tmp_path / "nowhere")})
    assert p.returncode == 0, p.stderr
    pred = pd.read_csv(tmp_path / "p.csv")
    accuracy = float((pred["prediction"].to_numpy() == raw["label"].to_numpy()).mean())
    assert accuracy == pytest.approx(record["scores"]["test"]["test_accuracy"], abs=1e-6)
    probs = pred[[f"proba_{c}" for c in record["classes"]]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0)
    # The TorchScript network gives the same outputs as the artefact's, on the prepared inputs.
    model = artefacts.load_model(out)
    x = model.inputs(raw.drop(columns="label"))
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    assert torch.allclose(torch.softmax(scripted(x).double(), 1), model.outputs(x), atol=1e-6)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = torch.as_tensor(session.run(None, {"input": x.numpy()})[0]).double()
    assert torch.allclose(torch.softmax(logits, 1), model.outputs(x), atol=1e-5)


def test_predict_writes_parquet_and_refuses_a_missing_column(swept, tmp_path: Path) -> None:
    store, _, frame = swept
    rows = frame.drop(columns="label").head(20).copy()
    rows.loc[rows.index[:3], "city"] = "berlin"  # a category the model never saw
    rows.to_csv(tmp_path / "in.csv", index=False)
    r = cli("predict", STUDY, tmp_path / "in.csv", "--out", tmp_path / "out.parquet", "--store", store)
    assert r.code == 0, r.stderr + r.detail
    assert "column 'city': 3 values the model never saw" in r.stderr
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert len(out) == 20 and set(out["prediction"]) <= {"low", "mid", "high"}
    assert list(out.columns[:7]) == list(rows.columns)

    rows.drop(columns=["income"]).to_csv(tmp_path / "missing.csv", index=False)
    r = cli("predict", STUDY, tmp_path / "missing.csv", "--out", tmp_path / "bad.parquet", "--store", store)
    assert_user_error(r, "column 'income' is missing")
    assert not (tmp_path / "bad.parquet").exists()
    assert not list(tmp_path.glob(".bad.parquet*"))  # nothing half-written
    r = cli("predict", "no-such-study", tmp_path / "in.csv", "--out", tmp_path / "x.parquet", "--store", store)
    assert_user_error(r, "no-such-study")
    r = cli("export", STUDY, "--trial", "nope", "--out", tmp_path / "x", "--store", store)
    assert_user_error(r, "--trial", "nope")


def test_fit_retrains_on_train_and_validation_rows_and_becomes_the_studys_model(swept, tmp_path: Path) -> None:
    store = copy_store(swept, tmp_path)
    before = os.path.realpath(store / "best" / STUDY)
    r = cli("fit", STUDY, "--store", store)
    assert r.code == 0, r.stderr + r.detail
    assert "test: test_accuracy" in r.stdout
    record = json.loads((store / "best" / STUDY / "model" / "model.json").read_text())["record"]
    assert record["kind"] == "fit" and 0 <= record["scores"]["test"]["test_accuracy"] <= 1
    trial = Store(store).trials(STUDY).set_index("trial_id").loc[record["trial_id"]]
    assert record["epoch"] == trial["best_epoch"]
    split = data_mod.prepare(pd.read_csv(swept[1]), "label", "classification", seed=0).rows
    assert record["rows"] == {"train": len(split["train"]) + len(split["val"]), "test": len(split["test"])}
    assert os.path.realpath(store / "best" / STUDY) != before
    assert Path(before).is_dir()  # the previous version stays for a reader that holds it


def test_an_ensemble_is_scored_and_recorded(swept, tmp_path: Path) -> None:
    store = copy_store(swept, tmp_path)
    r = cli("export", STUDY, "--ensemble", "2", "--out", tmp_path / "ens", "--store", store)
    assert r.code == 0, r.stderr + r.detail
    record = json.loads((tmp_path / "ens" / "model.json").read_text())["record"]
    assert record["kind"] == "ensemble" and len(record["members"]) == 2
    assert set(record["scores"]) == {"val", "test"} and "val_loss" in record["scores"]["val"]
    sweep_id = record["sweep_id"]
    assert (store / "models" / STUDY / sweep_id / "ensemble-2" / "model.json").is_file()  # recorded in the store
    model = artefacts.load_model(tmp_path / "ens")
    assert len(model.modules) == 2
    r = cli("export", STUDY, "--ensemble", "5", "--out", tmp_path / "ens5", "--store", store)
    assert_user_error(r, "--ensemble 5", "kept 2 trial models")


def test_promotion_is_atomic_for_a_reader(swept, tmp_path: Path) -> None:
    store = copy_store(swept, tmp_path)
    s = Store(store)
    kept = sorted(p for p in (store / "models" / STUDY).glob("*/*") if (p / "model.json").exists())
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                m = artefacts.load_model(store / "best" / STUDY)
                seen.add(m.record["trial_id"])
            except BaseException as err:  # noqa: BLE001
                errors.append(err)
                return

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(12):
        artefacts.promote(s, STUDY, kept[i % len(kept)])
    stop.set()
    reader.join()
    assert not errors, errors[0]
    assert len(seen) >= 1
    # Replaced versions stay a while for their readers, then go (all but the current and previous).
    versions = store / "best" / ".versions" / STUDY
    assert len(list(versions.iterdir())) >= 12
    for p in versions.iterdir():
        os.utime(p, (0, 0))
    artefacts.promote(s, STUDY, kept[0])
    assert len(list(versions.iterdir())) == 2
    # A best without a model: the link moves to a version with the config alone, never an older model.
    artefacts.promote(s, STUDY, None, "# best\n")
    with pytest.raises(artefacts.ArtefactError, match="the study's best has no model"):
        artefacts.load_model(store / "best" / STUDY)


def test_an_artefact_that_changed_or_names_unsigned_code_is_refused(swept, tmp_path: Path) -> None:
    store, _, _ = swept
    out = tmp_path / "m"
    artefacts.copy(artefacts.best_model_dir(Store(store), STUDY), out)
    weights = out / "weights.pt"
    torch.save({"x": torch.zeros(1)}, weights)
    with pytest.raises(artefacts.ArtefactError, match="weights.pt: changed since the artefact was written"):
        artefacts.load_model(out)
    # A model.json that names a factory, rewritten by someone without this machine's key.
    artefacts.copy(artefacts.best_model_dir(Store(store), STUDY), out)
    outer = json.loads((out / "model.json").read_text())
    outer["record"]["model"] = "os:system"
    (out / "model.json").write_text(json.dumps(outer))
    with pytest.raises(artefacts.ArtefactError, match="os:system, code this machine's key did not sign"):
        artefacts.load_model(out)
    with pytest.raises(artefacts.ArtefactError, match="no model.json"):
        artefacts.load_model(tmp_path)


def test_ties_are_broken_by_a_second_metric_then_epochs_then_size() -> None:
    trials = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d"],
        "best_val_loss": [1e-9, 1e-9, 1e-9, 0.5],
        "best_val_accuracy": [0.97, 0.99, 0.99, 1.0],
        "best_epoch": [3, 9, 4, 1],
        "n_params": [10, 10, 10, 1],
    })
    assert ranked(trials, "best_val_loss", "min")["trial_id"].tolist() == ["c", "b", "a", "d"]
    trials["best_epoch"] = 4
    trials.loc[1, "n_params"] = 5
    assert ranked(trials, "best_val_loss", "min")["trial_id"].tolist() == ["b", "c", "a", "d"]
    # An accuracy objective (many ties at 1.0): the loss decides.
    acc = pd.DataFrame({"trial_id": ["a", "b"], "best_val_accuracy": [1.0, 1.0], "best_val_loss": [0.2, 0.1]})
    assert ranked(acc, "best_val_accuracy", "max")["trial_id"].tolist() == ["b", "a"]


def test_the_evaluation_loss_does_not_underflow_for_confident_models() -> None:
    logits = torch.zeros(4, 3)
    logits[:, 0] = torch.tensor([20.0, 30.0, 40.0, 60.0])  # margins where float32 cross-entropy is 0
    y = torch.zeros(4, dtype=torch.long)
    assert float(torch.nn.functional.cross_entropy(logits, y)) == 0.0
    losses = [cross_entropy(logits[i:i + 1], y[i:i + 1]) for i in range(4)]
    assert all(v > 0 for v in losses) and losses == sorted(losses, reverse=True)
    assert cross_entropy(logits, y) == pytest.approx(np.mean(np.log1p(2 * np.exp(-logits[:, 0].double().numpy()))))
    wrong = torch.tensor([[0.0, 50.0]])
    assert cross_entropy(wrong, torch.tensor([0])) == pytest.approx(50.0)
    assert 0 < binary_cross_entropy(torch.tensor([40.0, -40.0]), torch.tensor([1, 0])) < 1e-16


def test_store_keep_models_is_checked() -> None:
    r = cli("check", CONFIG, "store.keep_models=-1", "--config-only")
    assert_user_error(r, "store.keep_models")


def test_predict_command_line_exit_status(swept, tmp_path: Path) -> None:
    store, _, frame = swept
    frame.drop(columns=["label", "age"]).head(5).to_csv(tmp_path / "in.csv", index=False)
    p = orch("predict", STUDY, tmp_path / "in.csv", "--out", tmp_path / "o.parquet", "--store", store)
    assert_user_error(as_run(p), "column 'age' is missing")


def test_export_replaces_an_earlier_export_but_never_a_directory_of_other_files(swept, tmp_path: Path) -> None:
    store, _, _ = swept
    out = tmp_path / "exported"
    assert cli("export", STUDY, "--out", out, "--store", store).code == 0
    r = cli("export", STUDY, "--out", out, "--store", store)  # again: the earlier export is replaced
    assert r.code == 0, r.stderr + r.detail
    (out / "notes.txt").write_text("mine")
    r = cli("export", STUDY, "--out", out, "--store", store)
    assert_user_error(r, "--out", "is not an empty directory or a model artefact")
    assert (out / "notes.txt").read_text() == "mine"
