"""A study's model for use: ``orch export``, ``orch predict`` and ``orch fit``.

- :func:`export`: a model artefact (the study's model, a kept trial's, or an ensemble of the top K)
  copied out of the store, with a TorchScript (and, where the ``onnx`` packages are installed, an
  ONNX) file of its network, each checked to give the network's outputs.
- :func:`predict`: a table (CSV or Parquet) through the study's model, to a Parquet file.
- :func:`fit`: the best config re-trained on the training and validation rows together, for the
  epochs its trial needed: recorded as the study's model with its test score.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from orchestrator.errors import DataError, SweepFailed, UserError
from orchestrator.store import fs
from orchestrator.store.fs import AnyPath, ObjectPath
from orchestrator.store.tables import Store
from orchestrator.tune import artefacts

if TYPE_CHECKING:
    from orchestrator.config.schema import SweepConfig
    from orchestrator.train.data import Dataset

EXPORTS_FILE = "exports.json"
TORCHSCRIPT_FILE = "model.torchscript.pt"
ONNX_FILE = "model.onnx"
TOLERANCE = 1e-5  # largest difference allowed between an exported network's outputs and the network's


# -- which model -------------------------------------------------------------------------------


def sweep_config(store: Store, study: str, sweep_id: str | None = None) -> tuple[SweepConfig, pd.Series]:
    """The config a study's sweep ran with (its best sweep by default) and that sweeps row.

    A config that names code to import is used only when this machine's key signed it.
    """
    from orchestrator.config import load as config_mod
    from orchestrator.config.imports import project_on_path
    from orchestrator.store import queries
    from orchestrator.tune import state_guard

    row, _ = queries.best_trial(store.root, study, sweep_id)
    text = str(row["config_yaml"])
    cfg = config_mod.from_yaml(text)
    if config_mod.uses_project_code(cfg):
        state_guard.trust_config(state_guard.load_key(store.root), str(row["sweep_id"]), "config_yaml", text,
                                 [row.get("config_sig")], f"study {study}")
        project_on_path(cfg.project)
    return cfg, row


def model_path(store: Store, study: str, trial: str | None = None, sweep_id: str | None = None) -> AnyPath:
    """The artefact of ``trial`` (a kept trial of any of the study's sweeps), else the study's model
    (``<store>/best/<study>``), else its best sweep's best trial.

    Raises:
        UserError: no such model in the store.
    """
    from orchestrator.names import check_name

    study = check_name(study, "study")
    root = store.path(artefacts.MODELS_DIR, study)
    if trial is not None:
        check_name(trial, "--trial")
        sweeps = [check_name(sweep_id, "--sweep")] if sweep_id else sorted(fs.subdirectories(root))
        for s in reversed(sweeps):
            path = root / s / trial
            if (path / artefacts.MODEL_FILE).exists():
                return path
        raise UserError(f"--trial: no model of trial {trial!r} in study {study!r}: a sweep keeps the models of "
                        f"its best store.keep_models trials (see {root})")
    if sweep_id is None:
        best = artefacts.best_model_dir(store, study)
        if best is not None and (best / artefacts.MODEL_FILE).exists():
            return best
    from orchestrator.store import queries

    row, _ = queries.best_trial(store.root, study, sweep_id)
    path = root / str(row["sweep_id"]) / str(row["best_trial_id"])
    if not (path / artefacts.MODEL_FILE).exists():
        raise UserError(f"study {study!r}: sweep {row['sweep_id']} kept no model of its best trial "
                        f"{row['best_trial_id']} (store.keep_models: 0, or a training function that does not "
                        "pass model= to ctx.report)")
    return path


# -- export --------------------------------------------------------------------------------------


def out_path(out: str | os.PathLike[str] | AnyPath) -> AnyPath:
    """``--out``: a local path, or a place in object storage (``s3://bucket/key``, also as the
    command line's path type leaves it: ``s3:/bucket/key``)."""
    if isinstance(out, ObjectPath):
        return out
    if isinstance(out, str) and fs.is_uri(out):
        return fs.as_path(out)
    path = Path(out)
    head = path.parts[0].lower() if path.parts else ""
    if head.endswith(":") and head[:-1] in fs.SCHEMES and len(path.parts) > 1:
        return fs.as_path(f"{head}//" + "/".join(path.parts[1:]))
    return path


def export(store: Store, study: str, out: str | AnyPath, *, trial: str | None = None, sweep_id: str | None = None,
           ensemble: int | None = None, trust_code: bool = False) -> tuple[AnyPath, dict[str, Any]]:
    """Copy a model artefact to ``out`` and add its network as TorchScript (and ONNX), checked.

    Returns ``out`` and what was exported (format -> file and largest output difference, or why not).
    An artefact in object storage is downloaded once, to a temporary directory; ``out`` may be
    in object storage too.
    """
    if ensemble is not None:
        if trial is not None:
            raise UserError("--ensemble and --trial: choose one")
        if ensemble < 1:
            raise UserError(f"--ensemble: the number of trials to average is at least 1 (got {ensemble})")
        cfg, row = sweep_config(store, study, sweep_id)
        source = artefacts.ensemble(cfg, store, str(row["sweep_id"]), ensemble, trust_code=trust_code)
    else:
        source = model_path(store, study, trial, sweep_id)
    target = out_path(out)
    exports: dict[str, Any] = {}
    with artefacts.fetched(source, everything=True) as art:
        model = artefacts.load_fetched(art, trust_code=trust_code)

        def add(directory: Path) -> None:
            exports.update(compiled(model, directory))
            (directory / EXPORTS_FILE).write_text(json.dumps(exports, indent=1))

        return artefacts.copy(art.directory, target, extra=add), exports


def _example(model: artefacts.Model, n: int) -> Any:
    shape = tuple(model.record["input_shape"])
    gen = torch.Generator().manual_seed(0)
    return torch.randn((n, *shape), generator=gen)


def compiled(model: artefacts.Model, out: Path) -> dict[str, Any]:
    """The artefact's network(s) as TorchScript and ONNX files in ``out``, each checked against the
    network on inputs of two batch sizes. A network that does not trace, or whose traced outputs
    differ, is not exported (the reason is returned instead)."""
    result: dict[str, Any] = {}
    if model.record.get("inputs", 1) != 1:
        reason = "a model of several inputs: use the artefact with orch.load_model"
        return {"torchscript": {"skipped": reason}, "onnx": {"skipped": reason}}
    for i, module in enumerate(model.modules):
        suffix = "" if len(model.modules) == 1 else f"-{i}"
        module = module.eval()
        a, b = _example(model, 8), _example(model, 3)
        entry: dict[str, Any]
        try:
            with torch.no_grad():
                want_a, want_b = module(a), module(b)
        except Exception as err:  # noqa: BLE001 - a network that takes other inputs than float samples
            reason = f"the network does not take float samples of its input shape ({type(err).__name__})"
            result.setdefault("torchscript", []).append({"skipped": reason})
            result.setdefault("onnx", []).append({"skipped": reason})
            continue
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(module, a)
                got_a, got_b = traced(a), traced(b)
            diff = max(float((got_a - want_a).abs().max()), float((got_b - want_b).abs().max()))
            if diff > TOLERANCE:
                entry = {"skipped": f"the traced network's outputs differ by {diff:.3g} (data-dependent control flow)"}
            else:
                name = TORCHSCRIPT_FILE.replace(".pt", f"{suffix}.pt")
                traced.save(str(out / name))
                entry = {"file": name, "max_abs_diff": diff}
        except Exception as err:  # noqa: BLE001 - torch.jit raises many kinds
            entry = {"skipped": f"does not trace: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
        result.setdefault("torchscript", []).append(entry)
        result.setdefault("onnx", []).append(_onnx(module, a, b, want_a, want_b, out, suffix))
    return {k: v[0] if len(v) == 1 else v for k, v in result.items()}


def _onnx(module: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, want_a: torch.Tensor, want_b: torch.Tensor,
          out: Path, suffix: str) -> dict[str, Any]:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # type: ignore[import-untyped]
    except ImportError:
        return {"skipped": "the onnx and onnxruntime packages are not installed (pip install onnx onnxruntime)"}
    name = ONNX_FILE.replace(".onnx", f"{suffix}.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (a,), str(out / name), input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
        session = onnxruntime.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        diff = max(float(np.abs(session.run(None, {"input": x.numpy()})[0] - w.numpy()).max())
                   for x, w in ((a, want_a), (b, want_b)))
    except Exception as err:  # noqa: BLE001
        (out / name).unlink(missing_ok=True)
        return {"skipped": f"does not export: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    if diff > 1e-4:
        (out / name).unlink(missing_ok=True)
        return {"skipped": f"the ONNX network's outputs differ by {diff:.3g}"}
    return {"file": name, "max_abs_diff": diff}


# -- predict -------------------------------------------------------------------------------------


def read_input(path: Path) -> pd.DataFrame:
    from orchestrator.train.data import read_table

    if not path.exists():
        raise DataError(f"{path}: file not found")
    frame = read_table(path)
    return frame


def predict(store: Store, study: str, data: Path, out: str | AnyPath, *, trial: str | None = None,
            trust_code: bool = False) -> tuple[AnyPath, int, dict[str, int]]:
    """Predict every row of ``data`` (CSV or Parquet) with the study's model (or ``trial``'s) and
    write ``out`` (Parquet, atomically): the input's columns, then ``prediction`` (and
    ``proba_<class>``). Returns (out, rows, unseen categories per column).

    Raises:
        DataError: a column the model needs is missing, a numeric column holds text.
    """
    model = artefacts.load_model(model_path(store, study, trial), trust_code=trust_code)
    frame = read_input(Path(data))
    if model.features is None:
        raise UserError(f"{data}: the model of study {study!r} takes tensors from a data factory, not a table; "
                        "use orch.load_model(path).predict(x) in Python")
    try:
        result = model.predict(frame)
    except DataError as err:  # the message names the column; say which file too
        raise DataError(f"{data}: {str(err).removeprefix('input: ')}") from None
    unseen = model.features.unseen(frame)
    clash = [c for c in result.columns if c in frame.columns]
    if clash:
        raise UserError(f"{data}: the input already has a column {clash[0]!r}, which orch predict writes; "
                        "rename or drop it")
    table = pd.concat([frame.reset_index(drop=True), result.reset_index(drop=True)], axis=1)
    if str(out).endswith(".csv"):
        raise UserError(f"--out: {out}: predictions are written as Parquet (name it .parquet)")
    out = out_path(out)
    if isinstance(out, ObjectPath):  # one upload: the object appears whole or not at all
        fs.write_atomic(out, lambda f: table.to_parquet(f, index=False))
        return out, len(table), unseen
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        table.to_parquet(tmp, index=False)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out, len(table), unseen


# -- fit -----------------------------------------------------------------------------------------


def merged(data: Dataset) -> Dataset:
    """``data`` with its validation rows added to its training rows (the preprocessing stays the
    one fitted on the training rows)."""
    if data.in_memory:
        return replace(data, x_train=np.concatenate([data.x_train, data.x_val]),
                       y_train=np.concatenate([data.y_train, data.y_val]))
    from torch.utils.data import ConcatDataset

    assert data.sets is not None
    sets = dict(data.sets)
    sets["train"] = ConcatDataset([data.sets["train"], data.sets["val"]])
    y_val = np.asarray([np.asarray(data.sets["val"][i][1]).reshape(-1)[0] for i in range(len(data.sets["val"]))])
    return replace(data, sets=sets, y_train=np.concatenate([data.y_train, y_val.astype(data.y_train.dtype)]))


def fit(store: Store, study: str, *, sweep_id: str | None = None,
        echo: Any = print) -> tuple[AnyPath, dict[str, Any]]:
    """Re-train the study's best config on its training and validation rows, for as many epochs as
    its best trial needed to reach its best (each epoch now sees the larger set, so the optimizer
    takes (train + val) / train times the steps), and make it the study's model.

    Returns the artefact (``<store>/models/<study>/<sweep_id>/fit/``) and its record.
    """
    from orchestrator.config import models, schema
    from orchestrator.store import queries
    from orchestrator.store import trials as trial_rules
    from orchestrator.train.context import BUILT_IN, ContractError, LocalBackend, TrialContext, TrialSetup, TrialStopped
    from orchestrator.train.trainer import trainable

    cfg, row = sweep_config(store, study, sweep_id)
    _, trial = queries.best_trial(store.root, study, str(row["sweep_id"]))
    hp = trial_rules.decode_config(trial)
    epochs = next((int(v) for v in (trial.get("best_epoch"), trial.get("epochs")) if pd.notna(v) and v), 0)
    if epochs < 1:
        raise UserError(f"study {study!r}: best trial {trial['trial_id']} records no best epoch to re-train for")
    data = artefacts.trial_data(cfg, hp)
    both = merged(data)
    setup = TrialSetup(base=schema.base_hyperparameters(cfg), model=models.model_id(cfg.model),
                       metric=cfg.objective.metric, mode=cfg.objective.mode, max_epochs=cfg.scheduler.max_epochs,
                       report_epochs=None, checkpoint_every=10**9, threads=cfg.train.threads or
                       max(1, int(cfg.resources.cpu_per_trial)), trainable=cfg.trainable or BUILT_IN,
                       num_workers=cfg.data.num_workers, project=cfg.project)
    # A fixed number of epochs (the validation rows are training rows now), and no blow-up rule: a
    # loss spike the sweep's trial survived is no reason to stop here. A non-finite loss still is.
    config = {**hp, "patience": None, "divergence_factor": None}
    final: dict[str, dict[str, torch.Tensor]] = {}  # the weights training ends with

    class Context(TrialContext):
        """Stops the training function after ``epochs`` epochs and keeps its model's weights then."""

        def report(self, epoch: int, metrics: Any, state: Any = None, test: Any = None,
                   model: torch.nn.Module | None = None) -> None:
            super().report(epoch, metrics, state=None, test=None, model=None)
            if epoch >= epochs:
                self.should_stop = True
                self._final = self._final or self._result(self._last, True)
            if self.should_stop and model is not None:
                final["weights"] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    torch.set_num_threads(setup.threads)
    fn = trainable(setup)
    ctx = Context(config, setup, both, LocalBackend(lambda result, checkpoint: None))
    echo(f"Re-training trial {trial['trial_id']}'s config on {len(both.y_train)} rows (train + validation) for "
         f"{epochs} epoch{'s' if epochs != 1 else ''} ...")
    try:
        fn(ctx.config, ctx)
    except TrialStopped:
        pass  # it reported after the last epoch: that report was dropped
    except ContractError as err:
        raise UserError(f"trainable: {err}") from None
    if ctx._status == "diverged":
        raise SweepFailed(f"orch fit: the re-training diverged ({ctx._reason})")
    if "weights" not in final:
        raise UserError(f"trainable: {setup.trainable} does not pass model= to ctx.report: orch fit keeps the "
                        "weights of the model it reports")
    member = artefacts.Member(final["weights"], ctx.config, str(trial["trial_id"]), epochs)
    spec = artefacts.spec_for(cfg, data, ctx.config, {
        "kind": "fit", "sweep_id": str(row["sweep_id"]), "trial_id": str(trial["trial_id"]), "epoch": epochs,
        "objective": None, "rows": {"train": int(len(both.y_train)), "test": int(len(data.y_test))
                                    if data.y_test is not None else None},
    }, n_outputs=ctx.n_outputs)
    scores = {"test": artefacts.evaluate(artefacts.in_memory([member], spec, data), data, "test")}
    path = artefacts.write(artefacts.sweep_models_dir(store, cfg.study, str(row["sweep_id"])) / "fit", [member],
                           spec, data, cfg, scores)
    artefacts.promote(store, cfg.study, path, queries.best_yaml(store.root, cfg.study, str(row["sweep_id"])))
    _, record, _ = artefacts.read_record(path)
    return path, record
