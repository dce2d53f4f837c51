"""Model artefacts in a store in object storage: a real S3 API (moto's server, tests/conftest.py).

The default tests seed the store without Ray: trials' weights written where a trial writes them
(``<store>/_ray/<sweep>/weights/``), kept by :func:`artefacts.keep_best` as a sweep keeps them.
One slow test runs the whole path: a sweep with ``--store s3://...``, then ``orch best``,
``orch export`` (also ``--ensemble``), ``orch predict`` and ``orch fit`` on that store.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import orchestrator
from orchestrator.config import load as config_mod
from orchestrator.config import models, schema
from orchestrator.errors import UserError
from orchestrator.examples.tables import mixed_classification
from orchestrator.store import fs
from orchestrator.store.tables import Store
from orchestrator.train import data as data_mod
from orchestrator.tune import artefacts
from tests.conftest import CONFIG, S3_BUCKET, assert_user_error, cli, orch

STUDY = "test-s3-models"
SWEEP = "20260101-000000-abcd"


def keys(s3: Any, uri: str) -> list[str]:
    """The keys under ``uri`` (a prefix of the test bucket), relative to it, sorted."""
    prefix = uri.split(f"s3://{S3_BUCKET}/", 1)[1].rstrip("/") + "/"
    return sorted(k[len(prefix):] for k in s3.keys(prefix) if not k.endswith("/"))


@pytest.fixture(scope="module")
def seeded(s3_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store on S3 holding the models :func:`artefacts.keep_best` kept of four trials' weights
    (trial ``d`` holds ``b``'s weights, as population-based training can leave them)."""
    base = tmp_path_factory.mktemp("s3models")
    frame = mixed_classification(300, seed=2)
    csv = base / "mixed.csv"
    frame.to_csv(csv, index=False)
    uri = s3_server.uri(f"models-{uuid.uuid4().hex[:8]}")
    cfg = config_mod.load(CONFIG, [f"study={STUDY}", "data.source=null", f"data.path={csv}", "data.target=label",
                                   "store.keep_models=3", "scheduler.max_epochs=3"])
    data = data_mod.load(cfg)
    hp = schema.base_hyperparameters(cfg)
    n_outputs = artefacts.outputs_of(cfg, hp, data)
    store = Store(fs.as_path(uri))
    weights_dir = store.sweep_dir(SWEEP) / "weights"
    rows = []
    states: dict[str, dict[str, torch.Tensor]] = {}
    for i, (trial, loss) in enumerate([("a", 0.9), ("b", 0.5), ("c", 0.7), ("d", 0.6), ("e", 0.8)]):
        torch.manual_seed(i)
        net = artefacts._network(models.model_id(cfg.model), tuple(data.input_shape), n_outputs, data.task, hp)
        states[trial] = states["b"] if trial == "d" else {k: v.clone() for k, v in net.state_dict().items()}
        if trial != "e":  # e: a trial that wrote no weights (a loop without model=)
            state = {"weights": states[trial], "epoch": 2, "n_outputs": n_outputs}
            fs.write_atomic(weights_dir / f"{trial}.pt", lambda f, s=state: torch.save(s, f))
        rows.append({"trial_id": trial, "status": "completed", "best_val_loss": loss, "best_epoch": 2,
                     **{f"config.{k}": v for k, v in hp.items() if not isinstance(v, (list, dict))}})
    uploads: list[tuple[str, str]] = []
    upload = artefacts._upload

    def recorded(source: Path, target: Any) -> None:
        uploads.append((str(target.parent), target.name))
        upload(source, target)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(artefacts, "_upload", recorded)
        kept = artefacts.keep_best(cfg, store, SWEEP, pd.DataFrame(rows), None, store.sweep_dir(SWEEP))
    frame.drop(columns="label").head(25).to_csv(base / "in.csv", index=False)
    return {"uri": uri, "store": store, "cfg": cfg, "data": data, "kept": kept, "uploads": uploads, "states": states,
            "csv": base / "in.csv", "frame": frame}


def test_keep_best_reads_the_trials_weights_from_s3_and_uploads_each_model_record_last(s3_server, seeded) -> None:
    kept, uri = seeded["kept"], seeded["uri"]
    # Best first; d's weights are b's (passed over for the next), e wrote none.
    assert [str(p) for p in kept] == [f"{uri}/models/{STUDY}/{SWEEP}/{t}" for t in ("b", "c", "a")]
    stored = keys(s3_server, uri)
    assert not [k for k in stored if k.startswith("_ray/")]  # the weights are gone with the sweep's models kept
    for t in ("b", "c", "a"):
        assert {k for k in stored if k.startswith(f"models/{STUDY}/{SWEEP}/{t}/")} == {
            f"models/{STUDY}/{SWEEP}/{t}/{n}" for n in ("model.json", "weights.pt", "preprocessing.json",
                                                      "config.yaml")}
    # Each artefact: its files uploaded one by one, the record that lists them last.
    by_dir: dict[str, list[str]] = {}
    for directory, name in seeded["uploads"]:
        by_dir.setdefault(directory, []).append(name)
    assert len(by_dir) == 3 and all(names[-1] == "model.json" and len(names) == 4 for names in by_dir.values())
    record = artefacts.read_record(f"{uri}/models/{STUDY}/{SWEEP}/b")[1]
    assert record["trial_id"] == "b" and record["objective"] == 0.5 and record["kind"] == "trial"
    model = orchestrator.load_model(f"{uri}/models/{STUDY}/{SWEEP}/b")
    assert str(model.path) == f"{uri}/models/{STUDY}/{SWEEP}/b"
    assert all(torch.equal(model.modules[0].state_dict()[k], v) for k, v in seeded["states"]["b"].items())


def test_best_on_s3_is_a_pointer_to_a_whole_version_and_old_versions_go(s3_server, seeded, monkeypatch) -> None:
    store, kept, uri, study = seeded["store"], seeded["kept"], seeded["uri"], "pointer"
    assert artefacts.best_model_dir(store, study) is None
    link = artefacts.promote(store, study, kept[0], "# best config\n")
    assert str(link) == f"{uri}/best/{study}"
    version = fs.as_path(f"{uri}/best/{study}/CURRENT").read_text().strip()
    assert keys(s3_server, f"{uri}/best/{study}") == ["CURRENT"]
    assert keys(s3_server, f"{uri}/best/.versions/{study}/{version}") == [
        "best.yaml", "model/config.yaml", "model/model.json", "model/preprocessing.json", "model/weights.pt"]
    assert str(artefacts.best_model_dir(store, study)) == f"{uri}/best/.versions/{study}/{version}/model"
    assert artefacts.load_model(link).record["trial_id"] == "b"
    assert artefacts.read_record(f"{uri}/best/.versions/{study}/{version}")[1]["trial_id"] == "b"  # a version too

    artefacts.promote(store, study, kept[1])
    assert artefacts.load_model(f"{uri}/best/{study}").record["trial_id"] == "c"
    for i in range(3):
        artefacts.promote(store, study, kept[i % 3])
    versions = {k.split("/")[0] for k in keys(s3_server, f"{uri}/best/.versions/{study}")}
    assert len(versions) == 5  # replaced versions stay a while for their readers
    # Then they go: all but the current one and the one it replaced.
    monkeypatch.setattr(artefacts, "KEEP_VERSIONS_S", 0.0)
    time.sleep(1.1)  # (object times are in whole seconds)
    artefacts.promote(store, study, kept[2])
    versions = {k.split("/")[0] for k in keys(s3_server, f"{uri}/best/.versions/{study}")}
    assert len(versions) == 2
    assert artefacts.load_model(f"{uri}/best/{study}").record["trial_id"] == "a"
    # A best without a model: best/<study> names a version holding the config alone.
    artefacts.promote(store, study, None, "# best\n")
    with pytest.raises(artefacts.ArtefactError, match="the study's best has no model"):
        artefacts.load_model(f"{uri}/best/{study}")


def test_a_reader_of_s3_gets_one_whole_version_while_it_is_replaced(seeded) -> None:
    store, kept, uri, cfg, data = seeded["store"], seeded["kept"], seeded["uri"], seeded["cfg"], seeded["data"]
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def read(path: str) -> None:
        while not stop.is_set():
            try:
                seen.add(artefacts.load_model(path).record["trial_id"])
            except BaseException as err:  # noqa: BLE001
                errors.append(err)
                return

    # best/<study> moved from version to version.
    artefacts.promote(store, "swapped", kept[0])
    reader = threading.Thread(target=read, args=(f"{uri}/best/swapped",))
    reader.start()
    for i in range(6):
        artefacts.promote(store, "swapped", kept[i % 2])
    stop.set()
    reader.join()
    assert not errors, errors[0]
    assert seen <= {"b", "c"} and seen

    # An artefact rewritten in place (orch fit again, an ensemble exported again).
    members = [artefacts.load_model(p) for p in kept[:2]]
    target = f"{uri}/models/{STUDY}/{SWEEP}/rewritten"

    def rewrite(i: int) -> None:
        m = members[i % 2]
        member = artefacts.Member(m.modules[0].state_dict(), m.record["members"][0]["hyperparameters"],
                                  m.record["trial_id"], 1)
        spec = artefacts.spec_for(cfg, data, member.hyperparameters, {"kind": "fit", "trial_id": member.trial_id})
        artefacts.write(target, [member], spec, data, cfg, {})

    rewrite(0)
    seen.clear()
    stop.clear()
    reader = threading.Thread(target=read, args=(target,))
    reader.start()
    for i in range(1, 7):
        rewrite(i)
    stop.set()
    reader.join()
    assert not errors, errors[0]
    assert seen <= {"b", "c"} and seen


def test_export_and_predict_from_an_s3_store_write_nothing_local_but_out(s3_server, seeded, tmp_path: Path,
                                                                          monkeypatch) -> None:
    store, kept, uri = seeded["store"], seeded["kept"], seeded["uri"]
    artefacts.promote(store, STUDY, kept[0], "# best\n")
    before = keys(s3_server, uri)
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    out = tmp_path / "exported"

    r = cli("export", STUDY, "--out", out, "--store", uri)
    assert r.code == 0, r.stderr + r.detail
    assert f"Model written to {out}" in r.stdout and "torchscript: model.torchscript.pt" in r.stdout
    assert json.loads((out / "model.json").read_text())["record"]["trial_id"] == "b"
    r = cli("export", STUDY, "--trial", "c", "--out", f"{uri}-out/exported", "--store", uri)  # --out on S3
    assert r.code == 0, r.stderr + r.detail
    assert f"Model written to {uri}-out/exported" in r.stdout
    assert {"model.json", "weights.pt", "exports.json", "model.torchscript.pt"} <= set(
        keys(s3_server, f"{uri}-out/exported"))
    r = cli("predict", STUDY, seeded["csv"], "--out", tmp_path / "p.parquet", "--store", uri)
    assert r.code == 0, r.stderr + r.detail
    r = cli("predict", STUDY, seeded["csv"], "--out", f"{uri}-out/p.parquet", "--store", uri)
    assert r.code == 0, r.stderr + r.detail
    local = pd.read_parquet(tmp_path / "p.parquet")
    remote = pd.read_parquet(fs.as_path(f"{uri}-out/p.parquet").open_input_file())
    pd.testing.assert_frame_equal(local, remote)

    # The same predictions from the store's model, the exported copy, and the export on S3.
    rows = pd.read_csv(seeded["csv"])
    expected = orchestrator.load_model(f"{uri}/best/{STUDY}").predict(rows)
    pd.testing.assert_frame_equal(local[expected.columns], expected)
    pd.testing.assert_frame_equal(artefacts.load_model(out).predict(rows), expected)
    trial_c = artefacts.load_model(f"{uri}-out/exported")
    assert trial_c.record["trial_id"] == "c" and len(trial_c.predict(rows)) == len(rows)

    assert keys(s3_server, uri) == before  # readers write nothing to the store
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []  # nor to the local disk but --out
    r = cli("export", STUDY, "--trial", "nope", "--out", tmp_path / "x", "--store", uri)
    assert_user_error(r, "--trial", "nope")


def test_load_model_refuses_an_artefact_changed_on_s3(seeded, monkeypatch) -> None:
    kept, uri = seeded["kept"], seeded["uri"]
    copied = f"{uri}-tampered/m"
    artefacts.copy(kept[0], copied)
    fs.write_atomic(fs.as_path(f"{copied}/weights.pt"), lambda f: torch.save({"x": torch.zeros(1)}, f))
    start = time.monotonic()
    with pytest.raises(artefacts.ArtefactError, match=f"{copied}/weights.pt: changed since the artefact was written"):
        artefacts.load_model(copied)
    assert time.monotonic() - start < artefacts.FETCH_WAIT_S / 3  # refused at once, not waited for
    # A model.json that names a factory, rewritten by someone without this machine's key.
    artefacts.copy(kept[0], copied)  # (replaces the artefact there)
    assert artefacts.load_model(copied).record["trial_id"] == "b"
    outer = json.loads(fs.as_path(f"{copied}/model.json").read_text())
    outer["record"]["model"] = "os:system"
    fs.as_path(f"{copied}/model.json").write_text(json.dumps(outer))
    with pytest.raises(artefacts.ArtefactError, match="os:system, code this machine's key did not sign"):
        artefacts.load_model(copied)
    artefacts.copy(kept[0], copied)
    fs.as_path(f"{copied}/preprocessing.json").write_text('{"features": null, "target": null}')
    with pytest.raises(artefacts.ArtefactError, match="preprocessing.json: changed since the artefact was written"):
        artefacts.load_model(copied)
    with pytest.raises(artefacts.ArtefactError, match="no model.json"):
        artefacts.load_model(f"{uri}-tampered/nothing-here")
    # A writer that stopped before the record: waited for a while (it may be being replaced), then refused.
    fs.as_path(f"{copied}/model.json").unlink()
    monkeypatch.setattr(artefacts, "FETCH_WAIT_S", 0.5)
    with pytest.raises(artefacts.ArtefactError, match="half-written"):
        artefacts.load_model(copied)
    artefacts.copy(kept[0], copied)  # an export there may replace it
    assert artefacts.load_model(copied).record["trial_id"] == "b"
    # An --out on S3 that holds other things is not replaced.
    fs.as_path(f"{uri}-tampered/mine/notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty prefix or a model artefact"):
        artefacts.copy(kept[0], f"{uri}-tampered/mine")


@pytest.mark.slow
def test_a_sweep_with_its_store_on_s3_keeps_promotes_exports_predicts_and_fits(s3_server, s3_store,
                                                                               tmp_path: Path) -> None:
    frame = mixed_classification(400, seed=3)
    csv = tmp_path / "mixed.csv"
    frame.to_csv(csv, index=False)
    work = tmp_path / "work"
    work.mkdir()
    study = "test-s3-sweep"
    p = orch("sweep", CONFIG, f"study={study}", "ray.num_cpus=2", "data.source=null", f"data.path={csv}",
             "data.target=label", "scheduler.max_epochs=3", "scheduler.grace_period=1", "search.num_samples=3",
             "store.keep_models=2", "--store", s3_store, cwd=work)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "warning" not in p.stderr + p.stdout, p.stdout + p.stderr
    assert list(work.iterdir()) == []  # the store is on S3: nothing local
    store = Store(fs.as_path(s3_store))
    trials = store.trials(study)
    sweep_id = str(trials["sweep_id"].iloc[0])
    stored = keys(s3_server, s3_store)
    assert not [k for k in stored if k.startswith(f"_ray/{sweep_id}/weights/")]
    kept = sorted({k.split("/")[3] for k in stored if k.startswith(f"models/{study}/{sweep_id}/")})
    assert len(kept) == 2 and "CURRENT" in keys(s3_server, f"{s3_store}/best/{study}")
    best = trials.loc[trials["best_val_loss"].idxmin()]
    model = orchestrator.load_model(f"{s3_store}/best/{study}")
    assert model.record["trial_id"] == best["trial_id"]
    assert model.record["scores"]["val"]["val_loss"] == pytest.approx(best["best_val_loss"], rel=1e-6)

    r = cli("best", study, "--store", s3_store)
    assert r.code == 0, r.stderr + r.detail
    r = cli("export", study, "--out", tmp_path / "exported", "--store", s3_store)
    assert r.code == 0, r.stderr + r.detail
    assert json.loads((tmp_path / "exported" / "model.json").read_text())["record"]["trial_id"] == best["trial_id"]
    frame.drop(columns="label").head(30).to_csv(tmp_path / "in.csv", index=False)
    r = cli("predict", study, tmp_path / "in.csv", "--out", tmp_path / "p.parquet", "--store", s3_store)
    assert r.code == 0, r.stderr + r.detail
    assert len(pd.read_parquet(tmp_path / "p.parquet")) == 30
    r = cli("export", study, "--ensemble", "2", "--out", tmp_path / "ens", "--store", s3_store)
    assert r.code == 0, r.stderr + r.detail
    assert f"models/{study}/{sweep_id}/ensemble-2/model.json" in keys(s3_server, s3_store)
    assert len(artefacts.load_model(tmp_path / "ens").modules) == 2
    r = cli("fit", study, "--store", s3_store)
    assert r.code == 0, r.stderr + r.detail
    assert orchestrator.load_model(f"{s3_store}/best/{study}").record["kind"] == "fit"
    assert f"models/{study}/{sweep_id}/fit/model.json" in keys(s3_server, s3_store)
