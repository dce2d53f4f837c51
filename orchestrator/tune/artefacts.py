"""Model artefacts: a trained model as a directory that predicts without the store.

A sweep keeps the model of each of its best ``store.keep_models`` trials (the weights of the
trial's best epoch) as ``<store>/models/<study>/<sweep_id>/<trial_id>/``; ``orch fit`` adds
``.../fit/`` (the best config re-trained on train+validation rows) and ``orch export --ensemble K``
``.../ensemble-K/`` (the top K trials' predictions averaged). The study's current model is
``<store>/best/<study>/model/`` (:func:`promote`). An artefact directory holds:

- ``model.json``: what the model is (the shipped model's name or the factory's import path, its
  hyperparameters, input shape, outputs, task, class labels), where it comes from (study, sweep,
  trial, epoch, code version) and its validation and test scores;
- ``weights.pt`` (``weights-<i>.pt`` per member of an ensemble): a state dict, tensors only, read
  with ``torch.load(weights_only=True)``;
- ``preprocessing.json``: the fitted feature transform of a table (imputation, scaling, one-hot
  categories) and the target's scaling, as plain numbers (no pickle);
- ``config.yaml``: the sweep's resolved config.

:func:`load_model` reads one (nothing in it runs code; a model named by import path is imported
only when this machine's key signed ``model.json``, or the caller says it trusts the code) and
:meth:`Model.predict` takes raw columns as the user has them.

A store in object storage (``s3://``, ``gs://``) has no links and no atomic directory renames:

- an artefact is built in a local temporary directory and uploaded file by file, ``model.json``
  (which lists and hashes the other files) last, a replaced one's ``model.json`` deleted first;
  a reader downloads ``model.json``, then the files it lists, then reads ``model.json`` again:
  the same bytes mean every file it got belongs to that record (else it reads again);
- ``best/<study>/CURRENT`` names the current version (``best/.versions/<study>/<version>/``,
  uploaded whole before it is named, never changed after); it is replaced in one upload;
- readers load from a local temporary copy (removed after) with the same checks as locally.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from orchestrator.errors import StoreError, UserError
from orchestrator.store import fs
from orchestrator.store.fs import AnyPath, ObjectPath

if TYPE_CHECKING:
    from orchestrator.config.schema import SweepConfig
    from orchestrator.store.tables import Store
    from orchestrator.train.data import Dataset

FORMAT = 1
MODEL_FILE = "model.json"
PREPROCESSING_FILE = "preprocessing.json"
CONFIG_FILE = "config.yaml"
MODELS_DIR = "models"
BEST_DIR = "best"
VERSIONS_DIR = ".versions"
POINTER_FILE = "CURRENT"  # object storage: best/<study>/CURRENT holds the current version's name
REPLACED_FILE = ".replaced"  # object storage: written into a version when it stops being the current one
FETCH_WAIT_S = 30.0  # how long a reader waits for an artefact being rewritten in object storage
BATCH = 4096


class ArtefactError(UserError):
    """A directory that is not a model artefact of this orch, or one that must not be loaded."""


@dataclass
class Member:
    """One trained network of an artefact (an ensemble has several)."""

    weights: dict[str, torch.Tensor]
    hyperparameters: dict[str, Any]  # the trial's, all of them (the model's are taken from these)
    trial_id: str = ""
    epoch: int = 0


@dataclass
class Spec:
    """What :func:`write` records about a model besides its weights."""

    model: str  # a shipped model's name or a factory's import path
    task: str
    input_shape: tuple[int, ...]
    n_outputs: int
    classes: list[Any] = field(default_factory=list)
    inputs: int = 1
    project: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # study, sweep_id, kind, metric, code_version, ...


# -- writing ------------------------------------------------------------------------------------


def sweep_models_dir(store: Store, study: str, sweep_id: str) -> AnyPath:
    from orchestrator.names import check_name

    return store.path(MODELS_DIR, check_name(study, "study"), check_name(sweep_id, "sweep id"))


def _path(path: str | os.PathLike[str] | AnyPath) -> AnyPath:
    """A local :class:`Path`, or an :class:`ObjectPath` for an object storage URI."""
    if isinstance(path, ObjectPath):
        return path
    if isinstance(path, str) and fs.is_uri(path):
        return fs.as_path(path)
    return Path(path)


def write(directory: AnyPath, members: Sequence[Member], spec: Spec, data: Dataset | None, cfg: SweepConfig,
          scores: dict[str, dict[str, float]]) -> AnyPath:
    """Write an artefact to ``directory`` atomically: built beside it, then renamed into place (a
    reader never sees half of one). An existing artefact there is replaced. In object storage:
    built in a local temporary directory, then uploaded (:func:`_publish`)."""
    from orchestrator.config import load as config_mod
    from orchestrator.tune import state_guard

    directory = _path(directory)
    remote = isinstance(directory, ObjectPath)
    if isinstance(directory, ObjectPath):
        tmp = Path(tempfile.mkdtemp(prefix="orch-artefact-"))
    else:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        files = []
        for i, m in enumerate(members):
            name = "weights.pt" if len(members) == 1 else f"weights-{i}.pt"
            torch.save({k: v.detach().cpu().contiguous() for k, v in m.weights.items()}, tmp / name)
            files.append({"weights": name, "trial_id": m.trial_id, "epoch": int(m.epoch),
                          "hyperparameters": _plain(m.hyperparameters), "sha256": _sha256(tmp / name)})
        pre = {"features": data.preprocessing.to_dict() if data is not None and data.preprocessing is not None
               else None,
               "target": data.target_scaling.to_dict() if data is not None and data.target_scaling is not None
               else None}
        (tmp / PREPROCESSING_FILE).write_text(json.dumps(pre, indent=1))
        (tmp / CONFIG_FILE).write_text(config_mod.to_yaml(cfg))
        record = {
            "format": FORMAT, "model": spec.model, "task": spec.task, "input_shape": list(spec.input_shape),
            "inputs": spec.inputs, "n_outputs": spec.n_outputs, "classes": _plain(spec.classes),
            "project": spec.project, "members": files, "scores": _plain(scores),
            "preprocessing_sha256": _sha256(tmp / PREPROCESSING_FILE),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **_plain(spec.info),
        }
        text = json.dumps(record, indent=1, sort_keys=True)
        sig = state_guard.text_digest(_signing_key(directory), "model", MODEL_FILE, text)
        (tmp / MODEL_FILE).write_text(json.dumps({"record": record, "signature": sig}, indent=1, sort_keys=True))
        if isinstance(directory, ObjectPath):
            _publish(tmp, directory)
        else:
            _swap(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if remote:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _signing_key(directory: AnyPath) -> Any:
    """This machine's key, to sign an artefact written to ``directory`` (refused when its file lies
    inside the local store ``directory`` is in; no key file can lie in object storage)."""
    from orchestrator.tune import state_guard

    return state_guard.load_key(None if fs.is_remote(directory) else _store_of(directory))


def copy(source: AnyPath, out: AnyPath, extra: Callable[[Path], Any] | None = None) -> AnyPath:
    """Copy an artefact to ``out``: built beside it (with ``extra(directory)`` adding files), then
    renamed into place, so ``out`` never holds half of one. Refuses to replace a directory that is
    not an artefact.

    Either may be in object storage: a source there is downloaded first (and checked to be one
    version of the artefact), an ``out`` there is built in a local temporary directory and
    uploaded with ``model.json`` last (:func:`_publish`)."""
    source, out = _path(source), _path(out)
    if isinstance(source, ObjectPath):
        with fetched(source, everything=True) as art:
            return copy(art.directory, out, extra)
    if isinstance(out, ObjectPath):
        if not _replaceable_remote(out):
            raise UserError(f"--out: {out} exists and is not an empty prefix or a model artefact")
        tmp = Path(tempfile.mkdtemp(prefix="orch-artefact-"))
        try:
            for p in source.resolve().iterdir():
                if p.is_file() and not p.name.startswith("."):
                    shutil.copy2(p, tmp / p.name)
            if extra is not None:
                extra(tmp)
            _publish(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out
    source, out = Path(source).resolve(), Path(out)
    if out.exists() and not _replaceable(out):
        raise UserError(f"--out: {out} exists and is not an empty directory or a model artefact")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for p in source.iterdir():
            if p.is_file() and not p.name.startswith("."):
                shutil.copy2(p, tmp / p.name)
        if extra is not None:
            extra(tmp)
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


ARTEFACT_FILES = re.compile(r"(model\.json|preprocessing\.json|config\.yaml|exports\.json|best\.yaml|"
                            r"weights(-\d+)?\.pt|model\.torchscript(-\d+)?\.pt|model(-\d+)?\.onnx)")


def _replaceable(out: Path) -> bool:
    """Whether ``out`` may be replaced: an empty directory, or an artefact holding nothing else
    (never the working directory or one of its parents)."""
    if not out.is_dir() or out.is_symlink():
        return False
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return False
    entries = list(out.iterdir())
    if not entries:
        return True
    try:
        read_record(out)
    except ArtefactError:
        return False
    return all(p.is_file() and not p.is_symlink() and ARTEFACT_FILES.fullmatch(p.name) for p in entries)


def _swap(built: Path, target: Path) -> None:
    """Put the complete directory ``built`` at ``target``, replacing what is there (moved aside
    first, removed after)."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(built, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- object storage -------------------------------------------------------------------------------


def _io(path: ObjectPath, fn: Callable[[], Any]) -> Any:
    """One call to the object store: a missing key is FileNotFoundError, any other failure a
    one-line StoreError naming ``path``."""
    try:
        return fn()
    except FileNotFoundError:
        raise
    except OSError as err:
        text = " ".join(str(err).split())
        # (an object deleted between pyarrow's look and its read: RESOURCE_NOT_FOUND)
        if any(s in text for s in ("Path does not exist", "NoSuchKey", "RESOURCE_NOT_FOUND")) or \
                "does not exist" in text.lower():
            raise FileNotFoundError(str(path)) from None
        raise StoreError(f"cannot use {path}: {text[:300]}") from None


def _entries(directory: ObjectPath, recursive: bool = False) -> list[Any]:
    """pyarrow's file infos of what lies under ``directory`` (none if nothing does)."""
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(directory.fs_path, recursive=recursive, allow_not_found=True)
    return _io(directory, lambda: directory.fs.get_file_info(selector))


def _file_names(directory: ObjectPath) -> list[str]:
    import pyarrow.fs as pafs

    return [i.base_name for i in _entries(directory) if i.type == pafs.FileType.File]


def _upload(source: Path, target: ObjectPath) -> None:
    """One local file to one object (streamed; it appears whole when the upload completes)."""
    def put() -> None:
        with open(source, "rb") as f, target.fs.open_output_stream(target.fs_path, compression=None) as out:
            shutil.copyfileobj(f, out, 1 << 22)
    _io(target, put)


def _read(source: ObjectPath) -> bytes:
    def get() -> bytes:
        with source.fs.open_input_stream(source.fs_path, compression=None) as f:
            return f.read()
    return _io(source, get)


def _download(source: ObjectPath, target: Path) -> None:
    def get() -> None:
        with source.fs.open_input_stream(source.fs_path, compression=None) as f, open(target, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 22)
    _io(source, get)


def _publish(built: Path, target: ObjectPath) -> None:
    """Upload the artefact directory ``built`` to ``target``, ``model.json`` last: a reader that
    finds the record finds every file it lists. An artefact already there is replaced: its
    ``model.json`` goes first (a reader that holds it reads it again when done, sees it changed and
    starts over), then its files that the new one does not have."""
    new = sorted(p.name for p in built.iterdir() if p.is_file() and not p.name.startswith("."))
    old = _file_names(target)
    if MODEL_FILE in old:
        (target / MODEL_FILE).unlink(missing_ok=True)
    for name in old:
        if name not in new and name != MODEL_FILE:
            (target / name).unlink(missing_ok=True)
    for name in sorted(new, key=lambda n: n == MODEL_FILE):
        _upload(built / name, target / name)


def _replaceable_remote(out: ObjectPath) -> bool:
    """Whether ``out`` may be replaced: nothing there, or orch's artefact files only (an export
    interrupted before its ``model.json`` included)."""
    import pyarrow.fs as pafs

    if out.is_file():
        return False
    entries = _entries(out)
    if not all(i.type == pafs.FileType.File and ARTEFACT_FILES.fullmatch(i.base_name) for i in entries):
        return False
    if any(i.base_name == MODEL_FILE for i in entries):
        try:
            read_record(out)
        except ArtefactError:
            return False
    return True


def _pointer(file: ObjectPath) -> str | None:
    """The version a ``best/<study>/CURRENT`` names, or None when there is none."""
    try:
        name = _read(file).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return None
    if not re.fullmatch(r"[0-9A-Za-z_-][0-9A-Za-z._-]*", name) or len(name) > 200:
        raise ArtefactError(f"{file}: not a version name orch wrote")
    return name


def _version_name() -> str:
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:6]}"


def _copy_remote(source: ObjectPath, target: ObjectPath) -> None:
    """Copy the artefact ``source`` to ``target`` (a new prefix) inside the object store, without
    downloading it: each file copied by the store, ``model.json`` last, the copy checked to be of
    one version (``model.json`` read before and after)."""
    directory, _, _, raw = _remote_record(source)
    deadline = time.monotonic() + FETCH_WAIT_S
    while True:
        for name in _file_names(directory):
            if name != MODEL_FILE and ARTEFACT_FILES.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):  # replaced meanwhile: read again below
                    _copy_object(directory / name, target / name)
        if _raw_record(directory) == raw:
            break
        _wait(deadline, directory)
        fs.rmtree(target)
        directory, _, _, raw = _remote_record(source)
    fs.write_bytes_atomic(target / MODEL_FILE, raw)


def _copy_object(source: ObjectPath, target: ObjectPath) -> None:
    """One object copied by the store itself (no download)."""
    _io(source, lambda: source.fs.copy_file(source.fs_path, target.fs_path))


def _wait(deadline: float, directory: AnyPath) -> None:
    if time.monotonic() > deadline:
        raise ArtefactError(f"{directory}: the artefact is being replaced, or half-written (its writer stopped "
                            f"before its {MODEL_FILE}): try again, or write it again")
    time.sleep(0.2)


def _promote_remote(store: Store, study: str, artefact: AnyPath | None, config_text: str | None) -> ObjectPath:
    """:func:`promote` in object storage: the version uploaded whole, then named by one upload of
    ``best/<study>/CURRENT``."""
    import pyarrow.fs as pafs

    best: ObjectPath = store.path(BEST_DIR)  # type: ignore[assignment]
    versions = best / VERSIONS_DIR / study
    name = _version_name()
    if artefact is not None:
        artefact = _path(artefact)
        target = versions / name / "model"
        if isinstance(artefact, ObjectPath) and (artefact.scheme, artefact.query) == (target.scheme, target.query):
            _copy_remote(artefact, target)
        else:
            with fetched(artefact, everything=True) as art:
                _publish(art.directory, target)
    if config_text is not None:
        fs.write_bytes_atomic(versions / name / "best.yaml", config_text.encode())
    pointer = best / study / POINTER_FILE
    previous = _pointer(pointer)
    fs.write_bytes_atomic(pointer, f"{name}\n".encode())
    current = _pointer(pointer)  # (another promotion may have replaced it since)
    now = pointer.stat().st_mtime  # the store's clock, as the versions' times are
    newest: dict[str, float] = {}
    for info in _entries(versions, recursive=True):
        version = info.path[len(versions.fs_path):].lstrip("/").split("/", 1)[0]
        mtime = info.mtime.timestamp() if info.type == pafs.FileType.File and info.mtime is not None else 0.0
        newest[version] = max(newest.get(version, 0.0), mtime)
    if previous and previous in newest:
        # Replaced now: its readers get KEEP_VERSIONS_S from here.
        with contextlib.suppress(StoreError):
            fs.write_bytes_atomic(versions / previous / REPLACED_FILE,
                                 datetime.now(timezone.utc).isoformat().encode())
    for version, mtime in newest.items():
        if version.startswith(".") or version in (name, previous, current):
            continue
        if now - mtime > KEEP_VERSIONS_S:
            with contextlib.suppress(StoreError):
                fs.rmtree(versions / version)
    return best / study


KEEP_VERSIONS_S = 600.0  # a replaced version of best/<study> stays at least this long (for its readers)


def promote(store: Store, study: str, artefact: AnyPath | None, config_text: str | None = None) -> AnyPath:
    """Make ``artefact`` the study's model: ``<store>/best/<study>/`` (``model/`` and, given,
    ``best.yaml``; with no artefact, the config alone: a best without a model).

    ``best/<study>`` is a link to a complete version directory, swapped in one rename: a reader
    sees the old model or the new one, never half of either. :func:`load_model` resolves the link
    once, so a swap while it reads does not mix two versions. Replaced versions are removed once
    they are neither the previous one nor younger than :data:`KEEP_VERSIONS_S`.

    In object storage ``best/<study>/CURRENT`` names the version (``best/.versions/<study>/<name>/``,
    uploaded before it is named); replaced versions go by the same rule, by the objects' times.
    """
    from orchestrator.names import check_name

    study = check_name(study, "study")
    if fs.is_remote(store.root):
        return _promote_remote(store, study, artefact, config_text)
    best = store.path(BEST_DIR)
    versions = store.path(BEST_DIR, VERSIONS_DIR, study)
    versions.mkdir(parents=True, exist_ok=True)
    name = _version_name()
    tmp = versions / f".{name}.tmp"
    tmp.mkdir()
    try:
        if artefact is not None:
            copy(artefact, tmp / "model")
        if config_text is not None:
            (tmp / "best.yaml").write_text(config_text)
        os.replace(tmp, versions / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    link = best / study
    if link.exists() and not link.is_symlink():
        # A copy of the store that followed the link (shutil.copytree): that directory becomes a
        # version like the others, and the link comes back.
        if not (link / "model" / MODEL_FILE).exists():
            raise UserError(f"{link} is a directory orch did not write (orch keeps a link there); move it away")
        os.replace(link, versions / f"{name[:-7]}copied")
    previous = os.path.basename(os.readlink(link)) if link.is_symlink() else None
    tmp_link = best / f".{study}.{uuid.uuid4().hex[:8]}.link"
    os.symlink(os.path.join(VERSIONS_DIR, study, name), tmp_link)
    os.replace(tmp_link, link)
    current = os.path.basename(os.readlink(link))  # (another promotion may have swapped it since)
    if previous and (versions / previous).is_dir():
        with contextlib.suppress(OSError):
            os.utime(versions / previous)  # replaced now: its readers get KEEP_VERSIONS_S from here
    now = time.time()
    for p in versions.iterdir():
        if p.name.startswith(".") or p.name in (name, previous, current):
            continue
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > KEEP_VERSIONS_S:
                shutil.rmtree(p, ignore_errors=True)
    return link


def best_model_dir(store: Store, study: str) -> AnyPath | None:
    """``<store>/best/<study>/model``, resolved to the version it is now, or None."""
    from orchestrator.names import check_name

    link = store.path(BEST_DIR) / check_name(study, "study")
    if isinstance(link, ObjectPath):
        version = _pointer(link / POINTER_FILE)
        return None if version is None else link.parent / VERSIONS_DIR / link.name / version / "model"
    if not link.exists():
        return None
    return Path(os.path.realpath(link)) / "model"


# -- reading ------------------------------------------------------------------------------------


class Model:
    """A trained model (one network, or an ensemble) with its preprocessing: :func:`load_model`."""

    def __init__(self, record: dict[str, Any], modules: list[torch.nn.Module], features: Any, target: Any,
                 path: AnyPath) -> None:
        self.record, self.modules, self.features, self.target, self.path = record, modules, features, target, path
        self.task: str = record["task"]
        self.classes: list[Any] = list(record.get("classes") or [])
        self.scores: dict[str, dict[str, float]] = record.get("scores") or {}

    def __repr__(self) -> str:
        what = f"ensemble of {len(self.modules)}" if len(self.modules) > 1 else self.record["model"]
        return f"<orch model {what}: {self.task}, from {self.path}>"

    @property
    def columns(self) -> list[str]:
        """The input columns :meth:`predict` needs (a table's), else []."""
        return list(self.features.columns) if self.features is not None else []

    def inputs(self, data: Any) -> Any:
        """``data`` as the networks' input: a table through the fitted preprocessing, else arrays
        or tensors of samples as the data factory gave them."""
        if self.features is not None:
            if isinstance(data, dict):
                data = pd.DataFrame(data)
            if not isinstance(data, pd.DataFrame):
                raise UserError(f"predict: this model takes a table (a pandas DataFrame with the columns "
                                f"{', '.join(self.columns[:10])}), got a {type(data).__name__}")
            return torch.as_tensor(self.features.transform(data))
        if isinstance(data, (tuple, list)) and self.record.get("inputs", 1) > 1:
            return tuple(_tensor(x) for x in data)
        return _tensor(data.to_numpy() if isinstance(data, pd.DataFrame) else data)

    @torch.no_grad()
    def outputs(self, x: Any) -> torch.Tensor:
        """Class probabilities (classification) or predictions in the model's target scale
        (regression), averaged over the members, for prepared inputs ``x``."""
        n = len(x[0]) if isinstance(x, tuple) else len(x)
        dev = next((p.device for p in self.modules[0].parameters()), torch.device("cpu"))
        parts = []
        for i in range(0, n, BATCH):
            xb = tuple(t[i:i + BATCH].to(dev) for t in x) if isinstance(x, tuple) else x[i:i + BATCH].to(dev)
            outs = [_head(self.task, m(*xb) if isinstance(xb, tuple) else m(xb)).cpu() for m in self.modules]
            parts.append(torch.stack(outs).mean(0))
        if not parts:
            width = max(len(self.classes), 1) if self.task == "classification" else 1
            return torch.zeros((0, width), dtype=torch.float64)
        return torch.cat(parts)

    def predict_proba(self, data: Any) -> np.ndarray:
        """Class probabilities, one column per class (in :attr:`classes` order)."""
        if self.task != "classification":
            raise UserError("predict_proba: this model is a regression")
        return self.outputs(self.inputs(data)).numpy()

    def predict(self, data: Any) -> pd.DataFrame:
        """Predictions for ``data`` (raw columns as the user has them, for a table): a frame with
        ``prediction`` (the class label, or the value in the target's units) and, for
        classification, ``proba_<label>`` per class. Rows keep ``data``'s index."""
        out = self.outputs(self.inputs(data)).numpy()
        index = data.index if isinstance(data, pd.DataFrame) else None
        if self.task == "classification":
            labels = np.asarray(self.classes, dtype=object)[out.argmax(1)] if len(out) else np.asarray([], object)
            frame = pd.DataFrame({"prediction": _label_array(labels)}, index=index)
            for j, c in enumerate(self.classes):
                frame[f"proba_{c}"] = out[:, j]
            return frame
        values = out[:, 0]
        if self.target is not None:
            values = self.target.inverse(values)
        return pd.DataFrame({"prediction": np.asarray(values, np.float64)}, index=index)


def _tensor(x: Any) -> torch.Tensor:
    """Samples as a CPU tensor (float64 arrays as float32, as the data factory's were trained on)."""
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.float() if t.dtype == torch.float64 else t


def _label_array(labels: np.ndarray) -> Any:
    try:
        return pd.array(labels.tolist())
    except (TypeError, ValueError):
        return labels


def _head(task: str, out: torch.Tensor) -> torch.Tensor:
    """A network's outputs as probabilities (softmax, or a sigmoid for one logit) or values."""
    out = out.detach().double()
    if task != "classification":
        return out.reshape(len(out), -1)[:, :1]
    if out.ndim == 1 or out.shape[1] == 1:
        p = torch.sigmoid(out.reshape(-1))
        return torch.stack([1.0 - p, p], 1)
    return torch.softmax(out, 1)


def read_record(path: str | AnyPath) -> tuple[AnyPath, dict[str, Any], bool]:
    """An artefact's ``model.json``: (the artefact's resolved directory, its record, whether this
    machine's key signed it).

    Raises:
        ArtefactError: no artefact there, or not one of this orch.
    """
    target = _path(path)
    if isinstance(target, ObjectPath):
        remote, record, signed, _ = _remote_record(target)
        return remote, record, signed
    directory = Path(os.path.realpath(target))
    best_version = (directory / "model").is_dir() or (directory / "best.yaml").exists()
    if directory.is_dir() and not (directory / MODEL_FILE).exists() and best_version:
        if not (directory / "model" / MODEL_FILE).exists():
            raise ArtefactError(f"{path}: the study's best has no model (its best trial kept none)")
        directory = directory / "model"  # <store>/best/<study>/
    file = directory / MODEL_FILE
    try:
        record, sig = _parsed(file.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise ArtefactError(f"{path}: not a model artefact (no {MODEL_FILE})") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ArtefactError(f"{file}: not a model artefact of this orch ({err})") from None
    return directory, record, _signed(directory, record, sig)


def _parsed(text: str) -> tuple[dict[str, Any], Any]:
    """A ``model.json``'s record and signature, checked to be orch's format."""
    outer = json.loads(text)
    record, sig = outer["record"], outer.get("signature")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError("an unknown format")
    for key, kind in (("model", str), ("task", str), ("input_shape", list), ("n_outputs", int),
                      ("members", list)):
        if not isinstance(record.get(key), kind):
            raise ValueError(f"{key!r} is missing or not a {kind.__name__}")
    if not record["members"]:
        raise ValueError("no members")
    if not all(isinstance(n, int) and n > 0 for n in record["input_shape"]):
        raise ValueError("'input_shape' is not a list of positive integers")
    for m in record["members"]:
        if not isinstance(m, dict) or not isinstance(m.get("weights"), str) or not isinstance(
                m.get("hyperparameters"), dict):
            raise ValueError("a member without weights or hyperparameters")
    return record, sig


def _signed(directory: AnyPath, record: dict[str, Any], sig: Any) -> bool:
    """Whether this machine's key signed ``record``."""
    from orchestrator.tune import state_guard

    text = json.dumps(record, indent=1, sort_keys=True)
    key = _machine_key(directory)
    signed = False
    if key is not None and isinstance(sig, str) and sig.isascii():
        signed = hmac.compare_digest(sig, state_guard.text_digest(key, "model", MODEL_FILE, text))
    return signed


def _remote_directory(path: ObjectPath) -> ObjectPath:
    """The artefact directory ``path`` names in object storage: itself, or, for ``best/<study>``
    (or one of its versions), the model of the version it names."""
    names = set(fs.names(path))
    if MODEL_FILE in names:
        return path
    if POINTER_FILE in names:
        version = _pointer(path / POINTER_FILE)
        if version is not None:
            path = path.parent / VERSIONS_DIR / path.name / version
            names = set(fs.names(path))
    if "model" in names or "best.yaml" in names:
        if MODEL_FILE not in fs.names(path / "model"):
            raise ArtefactError(f"{path}: the study's best has no model (its best trial kept none)")
        return path / "model"
    return path


def _raw_record(directory: ObjectPath) -> bytes | None:
    try:
        return _read(directory / MODEL_FILE)
    except FileNotFoundError:
        return None


def _remote_record(path: ObjectPath) -> tuple[ObjectPath, dict[str, Any], bool, bytes]:
    """:func:`read_record` in object storage, with ``model.json``'s bytes. An artefact whose
    ``model.json`` is missing while its other files are there (being replaced) is waited for."""
    deadline = time.monotonic() + FETCH_WAIT_S
    while True:
        directory = _remote_directory(path)
        raw = _raw_record(directory)
        if raw is not None:
            break
        if not any(ARTEFACT_FILES.fullmatch(n) for n in _file_names(directory)):
            raise ArtefactError(f"{path}: not a model artefact (no {MODEL_FILE})")
        _wait(deadline, directory)
    file = directory / MODEL_FILE
    try:
        record, sig = _parsed(raw.decode())
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise ArtefactError(f"{file}: not a model artefact of this orch ({err})") from None
    return directory, record, _signed(directory, record, sig), raw


def _machine_key(directory: AnyPath) -> Any:
    """This machine's state key, when it has one (reading an artefact creates none), refused when
    its file lies inside the store the artefact is in (whoever writes the store could sign)."""
    from orchestrator.tune import state_guard

    named = os.environ.get(state_guard.KEY_FILE_ENV, "").strip()
    if not os.environ.get(state_guard.KEY_ENV, "").strip():
        path = Path(named).expanduser() if named else state_guard.default_key_file()
        if not path.exists():
            return None
    return _signing_key(directory)


def _store_of(directory: Path) -> Path:
    """The results store ``directory`` lies in (the nearest parent with a store's tables), else itself."""
    directory = Path(directory).resolve()
    return next((p for p in directory.parents if (p / "_ray").is_dir() or (p / "sweeps").is_dir()), directory)


@dataclass
class Fetched:
    """An artefact as local files: ``directory`` holds them, ``where`` is where it is (the same
    directory, or its place in object storage, for messages)."""

    directory: Path
    where: AnyPath
    record: dict[str, Any]
    signed: bool


@contextlib.contextmanager
def fetched(path: str | AnyPath, everything: bool = False) -> Iterator[Fetched]:
    """The artefact at ``path`` as a local directory: its own, or, in object storage, a temporary
    copy of its files (``everything``: all of them, else those :func:`load_model` reads), removed
    when the block ends.

    The copy is of one version: ``model.json`` is read before the files and after them, and the
    files are read again until both reads agree (an artefact being replaced meanwhile).
    """
    target = _path(path)
    if not isinstance(target, ObjectPath):
        directory, record, signed = read_record(path)
        yield Fetched(directory, directory, record, signed)  # (a Path: local)
        return
    with tempfile.TemporaryDirectory(prefix="orch-model-") as tmp:
        local = Path(tmp)
        deadline = time.monotonic() + FETCH_WAIT_S
        while True:
            directory, record, signed, raw = _remote_record(target)
            names = [PREPROCESSING_FILE, *(Path(m["weights"]).name for m in record["members"])]
            if everything:
                names += _file_names(directory)
            for p in local.iterdir():
                p.unlink()
            for name in dict.fromkeys(names):
                if name != MODEL_FILE and ARTEFACT_FILES.fullmatch(name):
                    with contextlib.suppress(FileNotFoundError):  # the checks below say which
                        _download(directory / name, local / name)
            if _raw_record(directory) == raw:
                break
            _wait(deadline, directory)
        (local / MODEL_FILE).write_bytes(raw)
        yield Fetched(local, directory, record, signed)


def load_model(path: str | AnyPath, *, trust_code: bool = False, device: str | torch.device = "cpu") -> Model:
    """Load a model artefact (a directory :func:`write` wrote, or ``<store>/best/<study>``; either
    may be in object storage: ``s3://...``).

    Nothing in it runs code: the weights are read with ``weights_only=True`` and checked against
    their recorded hashes, the preprocessing is numbers. A model named by a shipped name (``mlp``,
    ``cnn``) is built by orch; one named by import path (your factory) is imported only when this
    machine's key signed the artefact (orch wrote it here) or ``trust_code=True``.

    Raises:
        ArtefactError: not an artefact, a file changed since it was written, code not trusted.
    """
    with fetched(path) as art:
        return load_fetched(art, trust_code=trust_code, device=device)


def load_fetched(art: Fetched, *, trust_code: bool = False, device: str | torch.device = "cpu") -> Model:
    """:func:`load_model` of an artefact :func:`fetched` gave."""
    from orchestrator.config import models
    from orchestrator.config.imports import project_on_path
    from orchestrator.train.preprocess import Preprocessing, TargetScaling

    directory, where, record, signed = art.directory, art.where, art.record, art.signed
    model = str(record["model"])
    if models.is_path(model) and not (signed or trust_code):
        raise ArtefactError(f"{where}: the model is built by {model}, code this machine's key did not sign "
                            "the artefact for; load it with trust_code=True (orch: --trust-code) if you trust "
                            "that code")
    if models.is_path(model):
        project_on_path(record.get("project"))
    try:
        pre = json.loads((directory / PREPROCESSING_FILE).read_text())
        pre_digest = _sha256(directory / PREPROCESSING_FILE)
    except (OSError, ValueError) as err:
        raise ArtefactError(f"{_shown(where, PREPROCESSING_FILE)}: unreadable ({_why(err, where)})") from None
    if pre_digest != record.get("preprocessing_sha256"):
        raise ArtefactError(f"{_shown(where, PREPROCESSING_FILE)}: changed since the artefact was written")
    if not isinstance(pre, dict):
        raise ArtefactError(f"{_shown(where, PREPROCESSING_FILE)}: not orch's preprocessing")
    features = Preprocessing.from_dict(pre["features"]) if pre.get("features") else None
    target = TargetScaling.from_dict(pre["target"]) if pre.get("target") else None
    modules = []
    for member in record["members"]:
        name = Path(member["weights"]).name
        file, shown = directory / name, _shown(where, name)
        try:
            digest = _sha256(file)
        except OSError as err:
            raise ArtefactError(f"{shown}: unreadable ({err.strerror or err})") from None
        if digest != member.get("sha256"):
            raise ArtefactError(f"{shown}: changed since the artefact was written")
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
            raise ArtefactError(f"{shown}: not a file of weights ({str(err).splitlines()[0][:200]})") from None
        try:
            module = _network(model, tuple(record["input_shape"]), int(record["n_outputs"]), record["task"],
                              member["hyperparameters"])
        except (TypeError, ValueError, KeyError) as err:
            raise ArtefactError(f"{_shown(where, MODEL_FILE)}: cannot build {model} from its record "
                                f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            raise ArtefactError(f"{shown}: the weights do not fit {model} with its recorded hyperparameters "
                                f"({str(err).splitlines()[0][:200]})") from None
        modules.append(module.to(device).eval())
    return Model(record, modules, features, target, where)


def _shown(where: AnyPath, name: str) -> AnyPath | str:
    """A file of an artefact as messages name it."""
    return where / name if isinstance(where, Path) else f"{where}/{name}"


def _why(err: OSError | ValueError, where: AnyPath) -> Any:
    """An error reading a file, without the temporary copy's path when the artefact is remote."""
    return err if isinstance(where, Path) else (getattr(err, "strerror", None) or err)


def _network(model: str, input_shape: tuple[int, ...], n_outputs: int, task: str,
             hp: dict[str, Any]) -> torch.nn.Module:
    """The model ``model`` built with the model hyperparameters among ``hp`` (weights not loaded)."""
    from orchestrator.config import models

    return models.build(model, input_shape, n_outputs, task,
                        **{k: hp[k] for k in models.hyperparameters(model) if k in hp})


def in_memory(members: Sequence[Member], spec: Spec, data: Dataset) -> Model:
    """The model an artefact of ``members`` would load as, without writing it (to score it before
    it is written, once)."""
    modules = []
    for m in members:
        module = _network(spec.model, tuple(spec.input_shape), spec.n_outputs, spec.task, m.hyperparameters)
        module.load_state_dict(m.weights)
        modules.append(module.eval())
    record = {"model": spec.model, "task": spec.task, "classes": list(spec.classes), "inputs": spec.inputs,
              "input_shape": list(spec.input_shape), "n_outputs": spec.n_outputs}
    return Model(record, modules, data.preprocessing, data.target_scaling, Path())


# -- the driver's side: a sweep's best trials, ensembles, scores ----------------------------------


def outputs_of(cfg: SweepConfig, hp: dict[str, Any], data: Dataset) -> int:
    """The network's outputs for ``hp``: orch's trainer sizes it by its loss (one logit for bce),
    a training function of the user's by the data (``ctx.build_model()``)."""
    from orchestrator.train.context import BUILT_IN
    from orchestrator.train.losses import TaskLoss

    if (cfg.trainable or BUILT_IN) == BUILT_IN:
        return TaskLoss(hp, data).n_outputs
    return data.n_outputs


def spec_for(cfg: SweepConfig, data: Dataset, hp: dict[str, Any], info: dict[str, Any],
             n_outputs: int | None = None) -> Spec:
    """What an artefact records of a model trained with ``hp`` on ``data`` (``n_outputs``: as
    the trial built it, when it said: ``ctx.build_model(n_outputs)``)."""
    from orchestrator.config import models
    from orchestrator.tune.compile import code_version

    return Spec(model=models.model_id(cfg.model), task=data.task, input_shape=tuple(data.input_shape),
                n_outputs=int(n_outputs) if n_outputs else outputs_of(cfg, hp, data), classes=list(data.classes),
                inputs=data.inputs,
                project=cfg.project, info={"study": cfg.study, "metric": cfg.objective.metric,
                                           "mode": cfg.objective.mode, "code_version": code_version(cfg),
                                           "orch_version": _version(), "data_fingerprint": data.fingerprint,
                                           **info})


def evaluate(model: Model, data: Dataset, split: str) -> dict[str, float]:
    """``model``'s scores on one split of ``data`` (already prepared: no preprocessing applied),
    as a trial reports them (``<split>_loss``, ``<split>_accuracy``, ...)."""
    from orchestrator.train.losses import TaskLoss, scores

    if data.in_memory:
        x = getattr(data, f"x_{split}")
        y = torch.as_tensor(getattr(data, f"y_{split}"))
        if x is None or not len(x):
            return {}
        out = model.outputs(torch.as_tensor(x))
    else:
        ds = data.split(split)
        if ds is None or not len(ds):
            return {}
        outs, ys = [], []
        for xb, yb in torch.utils.data.DataLoader(ds, batch_size=BATCH):
            outs.append(model.outputs(tuple(xb) if isinstance(xb, (tuple, list)) else xb))
            ys.append(torch.as_tensor(yb).reshape(-1))
        out, y = torch.cat(outs), torch.cat(ys)
    if data.task == "classification":
        logits = torch.log(out.clamp_min(1e-300))
        kind = "cross_entropy"
    else:
        logits, kind = out, "mse"
    units = getattr(data, f"y_{split}_units", None) if data.task == "regression" else None
    if data.task == "regression" and (units is None or not len(units)):
        units = data.to_target_units(y.double().numpy())
    result = scores(logits, y.long() if data.task == "classification" else y.float(), data,
                    TaskLoss({"loss": kind}, data), split, units)
    return {k: v for k, v in result.items() if not k.endswith(("_collapsed", "_top_class_share", "_pred_std_ratio"))}


def scored(model: Model, data: Dataset) -> dict[str, dict[str, float]]:
    return {"val": evaluate(model, data, "val"), "test": evaluate(model, data, "test")}


def trial_data(cfg: SweepConfig, hp: dict[str, Any], variants: Any = None) -> Dataset:
    """The data a trial with ``hp`` trained on (its feature and target scaling)."""
    from orchestrator.train import data as data_mod

    if variants is not None:
        with contextlib.suppress(KeyError):
            return data_mod.select(variants, hp)
    if cfg.data.factory:
        return data_mod.load(cfg)
    return data_mod.load(cfg, hp.get("scale"), hp.get("target_scale"))


def keep_best(cfg: SweepConfig, store: Store, sweep_id: str, trials: pd.DataFrame, data: Any,
              exp_dir: str | AnyPath, warn: Callable[[str], None] | None = None) -> list[AnyPath]:
    """The artefacts of the sweep's best ``store.keep_models`` trials (their best epochs' weights,
    which each trial wrote to ``<exp_dir>/weights/``), best first; the weights directory goes.

    A trial without weights (a training function that does not pass ``model=``), or whose weights
    are another kept trial's (population-based training copies weights between trials), is passed
    over for the next; one whose artefact cannot be written is a warning.
    """
    from orchestrator.names import check_name
    from orchestrator.store import trials as trial_rules
    from orchestrator.tune.files import WEIGHTS_DIR

    weights_dir = _path(exp_dir) / WEIGHTS_DIR
    out: list[AnyPath] = []
    column = f"best_{cfg.objective.metric}"
    try:
        ok = trial_rules.usable(trials, column)
        seen: set[str] = set()
        for _, row in trial_rules.ranked(ok, column, cfg.objective.mode).iterrows():
            if len(out) >= cfg.store.keep_models:
                break
            trial_id = check_name(str(row["trial_id"]), "trial id")  # a directory name inside the store
            file = weights_dir / f"{trial_id}.pt"
            source: Any = file
            if isinstance(file, ObjectPath):
                try:
                    source = io.BytesIO(_read(file))  # (one request: no look first)
                except FileNotFoundError:
                    continue
            elif not file.exists():
                continue
            try:
                saved = torch.load(source, map_location="cpu", weights_only=True)
                digest = _weights_digest(saved["weights"])
                if digest in seen:
                    continue
                hp = trial_rules.decode_config(row)
                d = trial_data(cfg, hp, data)
                member = Member(saved["weights"], hp, trial_id, int(saved.get("epoch") or 0))
                spec = spec_for(cfg, d, hp, {"kind": "trial", "sweep_id": sweep_id, "trial_id": trial_id,
                                             "epoch": member.epoch, "objective": float(row[column])},
                                n_outputs=saved.get("n_outputs"))
                spec.info["recorded_test"] = {k: _float(v) for k, v in row.items() if str(k).startswith("test_")}
                scores = scored(in_memory([member], spec, d), d)
                path = write(sweep_models_dir(store, cfg.study, sweep_id) / trial_id, [member], spec, d, cfg, scores)
            except Exception as err:  # noqa: BLE001 - one trial's model, not the sweep's results
                if warn is not None:
                    warn(f"orch: warning: no model kept for trial {trial_id}: {type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]}")
                continue
            seen.add(digest)
            out.append(path)
    finally:
        if isinstance(weights_dir, ObjectPath):
            try:
                fs.rmtree(weights_dir)
            except Exception as err:  # noqa: BLE001 - the models are kept either way
                if warn is not None:
                    warn(f"orch: warning: the trials' weights were not removed from {weights_dir}: "
                         f"{' '.join(str(err).split())[:200]}")
        elif weights_dir.exists():
            shutil.rmtree(weights_dir, ignore_errors=True)
    return out


def _weights_digest(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode() + weights[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def ensemble(cfg: SweepConfig, store: Store, sweep_id: str, k: int, data: Any = None,
             trust_code: bool = False) -> AnyPath:
    """``<store>/models/<study>/<sweep_id>/ensemble-<k>/``: the top ``k`` kept trials of the sweep as
    one model that averages their predictions (probabilities, or values), scored on validation and
    test rows.

    Raises:
        UserError: fewer than ``k`` models kept, or kept models that do not share their input.
    """
    base = sweep_models_dir(store, cfg.study, sweep_id)
    kept: list[tuple[AnyPath, dict[str, Any]]] = []
    entries: list[AnyPath] = list(base.iterdir()) if base.exists() else []
    for p in sorted(entries, key=lambda p: p.name):
        if p.is_dir() and not p.name.startswith(".") and (p / MODEL_FILE).exists():
            _, record, _ = read_record(p)
            if record.get("kind") == "trial":
                kept.append((p, record))
    if len(kept) < k:
        raise UserError(f"--ensemble {k}: sweep {sweep_id} kept {len(kept)} trial model"
                        f"{'s' if len(kept) != 1 else ''} (store.keep_models: {cfg.store.keep_models}); "
                        f"use at most {len(kept)}, or raise store.keep_models for the next sweep")
    better = cfg.objective.mode == "min"
    kept.sort(key=lambda pr: (pr[1]["objective"] if better else -pr[1]["objective"]))
    chosen = kept[:k]
    if len({int(r["n_outputs"]) for _, r in chosen}) > 1:
        raise UserError(f"--ensemble {k}: the top trials' networks have different numbers of outputs")
    loaded = [load_model(p, trust_code=trust_code) for p, _ in chosen]
    members, datasets = [], []
    by_scaling: dict[tuple[Any, Any], Dataset] = {}  # the data, loaded once per scaling the members used
    for model, (_, record) in zip(loaded, chosen, strict=True):
        member = record["members"][0]
        hp = member["hyperparameters"]
        members.append(Member(model.modules[0].state_dict(), hp, member["trial_id"], member["epoch"]))
        key = (hp.get("scale"), hp.get("target_scale"))
        if key not in by_scaling:
            by_scaling[key] = trial_data(cfg, hp, data)
        datasets.append(by_scaling[key])
    # Members trained on differently scaled inputs each need their own: an ensemble shares one.
    first = datasets[0]
    for _, record in chosen:
        if record.get("data_fingerprint") and record["data_fingerprint"] != first.fingerprint:
            raise UserError(f"--ensemble {k}: the data changed since sweep {sweep_id} (fingerprint "
                            f"{first.fingerprint}, the models were trained on {record['data_fingerprint']}); "
                            "re-run the sweep (orch retune) to ensemble models of today's data")
    for d, m in zip(datasets[1:], members[1:], strict=True):
        if (d.scale, d.target_scale) != (first.scale, first.target_scale):
            raise UserError(f"--ensemble {k}: trial {m.trial_id} trained on data scaled otherwise "
                            f"({d.scale}/{d.target_scale}) than trial {members[0].trial_id} "
                            f"({first.scale}/{first.target_scale}); an ensemble shares one preprocessing")
    joined = Model(chosen[0][1], [m.modules[0] for m in loaded], loaded[0].features, loaded[0].target,
                   chosen[0][0])
    spec = spec_for(cfg, first, members[0].hyperparameters,
                    {"kind": "ensemble", "sweep_id": sweep_id, "trial_ids": [m.trial_id for m in members],
                     "objective": None}, n_outputs=int(chosen[0][1]["n_outputs"]))
    return write(base / f"ensemble-{k}", members, spec, first, cfg, scored(joined, first))


# -- helpers --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _plain(value: Any) -> Any:
    """JSON-safe: NumPy scalars as numbers, tuples as lists, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _version() -> str:
    from orchestrator import __version__

    return __version__
