"""A sweep's data: tables read once in the driver, split, encoded and scaled (fitted on train only),
or the splits a data factory of the user's returns; fingerprinted.

The result is a :class:`Dataset`: in-memory arrays (a table's float32 features, or a factory's
tensors of any shape), or torch Datasets for data a factory serves sample by sample. The sweep puts
it into Ray's object store once, and trials read it from there (``data.load_in: trial``: each trial
calls the factory itself).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from orchestrator.config.load import check_source
from orchestrator.config.schema import BUNDLED_DATASETS
from orchestrator.errors import DataError
from orchestrator.train.preprocess import Preprocessing, TargetScaling

if TYPE_CHECKING:
    from orchestrator.config.schema import SweepConfig

log = logging.getLogger(__name__)

# Classification targets with at most this many distinct integer values are taken as classes.
MAX_INFERRED_CLASSES = 50


def _sklearn(loader_name: str) -> Callable[[], tuple[pd.DataFrame, str]]:
    def load() -> tuple[pd.DataFrame, str]:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader_name)(as_frame=True)
        frame = bunch.frame.copy()
        return frame, "target"

    return load


# The bundled scikit-learn datasets (orchestrator.config.schema.BUNDLED_DATASETS): name -> (loader, task).
SKLEARN_DATASETS: dict[str, tuple[Callable[[], tuple[pd.DataFrame, str]], str]] = {
    name: (_sklearn(f"load_{name}"), task) for name, task in BUNDLED_DATASETS.items()
}


@dataclass
class Dataset:
    """Model-ready splits (float32 features; int64 classes or float32 standardised targets)."""

    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]
    classes: list[Any] = field(default_factory=list)  # original labels, index = class id
    # Regression: the target in its own units for val and test, the training target's spread (the
    # unit of val_loss) and the fitted target scaler (None: the model predicts the target as is; else
    # the same object as target_scaling).
    y_val_units: np.ndarray | None = None
    y_test_units: np.ndarray | None = None
    target_std: float = 1.0
    target_scaler: Any = None
    scale: str = "standard"
    target_scale: str = "standard"
    target_distinct: int = 0  # distinct target values in the table (for `orch check`)
    target_integral: bool = True  # every target value is a whole number
    fingerprint: str = ""
    n_rows: int = 0
    # A factory's splits served sample by sample (torch Datasets yielding (x, y)): "train", "val",
    # "test"; then x_* and y_* are None (y_train holds the training labels of a classification).
    sets: dict[str, Any] | None = None
    sample_shape: tuple[int, ...] = ()  # one sample's shape (default: x_train's rows)
    inputs: int = 1  # the model's inputs (a factory's sample may hold several tensors)
    source: str = ""
    # A table's rows of each split: the labels of the table's index ("train", "val", "test").
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    # A table's fitted feature transform and a regression target's scaling, as plain data (they
    # export with a model as JSON); None for a factory's data.
    preprocessing: Preprocessing | None = None
    target_scaling: TargetScaling | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.sample_shape:
            return self.sample_shape
        return tuple(int(n) for n in self.x_train.shape[1:])

    @property
    def in_memory(self) -> bool:
        """Arrays the trainer indexes batch by batch (no DataLoader needed)."""
        return self.sets is None

    @property
    def train(self) -> Any:
        """The training split as a torch Dataset of (x, y)."""
        return self.split("train")

    @property
    def val(self) -> Any:
        return self.split("val")

    @property
    def test(self) -> Any:
        return self.split("test")

    def split(self, name: str) -> Any:
        """The split ``name`` ("train", "val", "test") as a torch Dataset yielding (x, y)."""
        import torch
        from torch.utils.data import TensorDataset

        if self.sets is not None:
            return self.sets.get(name) or TensorDataset(torch.zeros((0, *self.input_shape)), torch.zeros(0))
        x, y = getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
        return TensorDataset(torch.as_tensor(x), torch.as_tensor(y))

    def describe(self) -> str:
        if self.sets is None and len(self.input_shape) == 1:
            return f"{self.n_rows} rows x {self.n_features} features ({self.task})"
        return f"{self.n_rows} samples of shape {self.input_shape} ({self.task})"

    def to_target_units(self, pred: np.ndarray) -> np.ndarray:
        """Regression predictions in the target's own units (undo the target scaling)."""
        if self.target_scaling is not None:
            return self.target_scaling.inverse(np.asarray(pred, np.float64).ravel())
        if self.target_scaler is None:
            return pred
        return self.target_scaler.inverse_transform(np.asarray(pred, np.float64).reshape(-1, 1)).ravel()

    @property
    def n_features(self) -> int:
        return math.prod(self.input_shape)

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else 1


def fingerprint(frame: pd.DataFrame) -> str:
    """A hash of the table's content (values, column names and dtypes), independent of row index."""
    h = hashlib.sha256()
    h.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise DataError(f"data.path: file not found: {path}") from None
    except Exception as err:  # pandas raises many kinds for a malformed file
        raise DataError(f"data.path: cannot read {path}: {str(err).splitlines()[0]}") from None


def infer_task(y: pd.Series) -> str:
    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        return "classification"
    values = y.to_numpy()
    integral = np.all(np.equal(np.mod(values, 1), 0))
    if integral and y.nunique() <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def prepare(frame: pd.DataFrame, target: str, task: str | None = None, val_fraction: float = 0.2,
            test_fraction: float = 0.2, scale: str = "standard", seed: int = 0,
            source: str = "data", target_scale: str = "standard") -> Dataset:
    """Split, encode and scale a table. Everything is fitted on the training rows only.

    Numeric columns: missing values imputed with the training median plus a 0/1 indicator column,
    then scaled. String/categorical/bool columns: one-hot encoded (unknown categories at validation
    time encode as all zeros). Rows whose target is missing are dropped with a warning.
    """
    from sklearn.model_selection import train_test_split

    if frame.shape[0] == 0:
        raise DataError(f"{source}: the table is empty")
    if target not in frame.columns:
        cols = ", ".join(map(str, frame.columns[:20]))
        from orchestrator.config.load import did_you_mean

        hint = did_you_mean(target, [str(c) for c in frame.columns])
        raise DataError(f"data.target: column {target!r} not in {source}{hint}; columns: {cols}")
    fp = fingerprint(frame)
    missing = frame[target].isna()
    if missing.any():
        warnings.warn(f"{source}: dropped {int(missing.sum())} rows with a missing target '{target}'", stacklevel=2)
        frame = frame.loc[~missing]
    if frame.shape[0] == 0:
        raise DataError(f"{source}: no rows left with a target value in '{target}'")
    y_raw = frame[target]
    x_frame = frame.drop(columns=[target])
    if x_frame.shape[1] == 0:
        raise DataError(f"{source}: no feature columns besides the target '{target}'")
    task = task or infer_task(y_raw)

    classes: list[Any] = []
    if task == "classification":
        classes = sorted(y_raw.unique().tolist(), key=lambda v: (str(type(v)), v))
        if len(classes) < 2:
            raise DataError(f"data.target: '{target}' has a single class ({classes[0]!r}); "
                            "classification needs two or more")
        index = {c: i for i, c in enumerate(classes)}
        y_all = y_raw.map(index).to_numpy(dtype=np.int64)
    else:
        if not pd.api.types.is_numeric_dtype(y_raw):
            raise DataError(f"data.target: '{target}' is not numeric, so it cannot be a regression target "
                            "(set data.task: classification)")
        y_all = y_raw.to_numpy(dtype=np.float64)

    n = len(y_all)
    idx = np.arange(n)
    stratify = y_all if task == "classification" else None
    if stratify is not None and np.bincount(y_all).min() < 3:
        # A class too rare to appear in every split: split at random (`orch check` flags it).
        warnings.warn(f"{source}: a class of '{target}' has fewer than 3 rows; the splits are not stratified",
                      stacklevel=2)
        stratify = None
    holdout = val_fraction + test_fraction
    try:
        idx_train, idx_rest = train_test_split(idx, test_size=holdout, random_state=seed, stratify=stratify)
        if test_fraction > 0:
            rel_test = test_fraction / holdout
            strat_rest = y_all[idx_rest] if stratify is not None else None
            idx_val, idx_test = train_test_split(idx_rest, test_size=rel_test, random_state=seed, stratify=strat_rest)
        else:
            idx_val, idx_test = idx_rest, idx_rest[:0]
    except ValueError as err:
        raise DataError(f"{source}: cannot split {n} rows into train/val/test ({err})") from None

    # Fitted on the training rows; the same plain-data transform runs here and when serving.
    pre = Preprocessing.fit(x_frame.iloc[idx_train], scale)
    x_train = pre.transform(x_frame.iloc[idx_train])
    x_val = pre.transform(x_frame.iloc[idx_val])
    x_test = pre.transform(x_frame.iloc[idx_test])
    names = list(pre.feature_names)

    scaling, units, y_model = None, {}, y_all
    if task == "regression":
        scaling = TargetScaling.fit(y_all[idx_train], target_scale)
        y_model = scaling.transform(y_all).astype(np.float32)
        units = {"y_val_units": y_all[idx_val].astype(np.float64), "y_test_units": y_all[idx_test].astype(np.float64)}
    y_numeric = pd.to_numeric(y_raw, errors="coerce")
    integral = bool(y_numeric.notna().all() and np.all(np.mod(y_numeric.to_numpy(dtype=np.float64), 1) == 0))
    return Dataset(
        task=task,
        x_train=x_train, y_train=y_model[idx_train],
        x_val=x_val, y_val=y_model[idx_val],
        x_test=x_test, y_test=y_model[idx_test],
        feature_names=names, classes=classes,
        target_std=(float(y_all[idx_train].std()) or 1.0) if task == "regression" else 1.0,
        target_scaler=scaling if scaling is not None and scaling.kind != "none" else None,
        scale=scale, target_scale=target_scale,
        target_distinct=int(y_raw.nunique()), target_integral=integral,
        fingerprint=fp, n_rows=n, preprocessing=pre, target_scaling=scaling, **units,
        rows={"train": frame.index.to_numpy()[idx_train], "val": frame.index.to_numpy()[idx_val],
              "test": frame.index.to_numpy()[idx_test]},
    )


def load(cfg: SweepConfig, scale: str | None = None, target_scale: str | None = None) -> Dataset:
    """Load and prepare the data named by a sweep config (``cfg.data``), optionally with other
    feature and target scalings than the config's."""
    from orchestrator.config.load import resolve_path

    d = cfg.data
    task: str | None
    if d.factory is not None:
        return from_factory(cfg)
    if d.source is not None:
        check_source(d.source)
        name = d.source.split(":", 1)[1]
        loader, default_task = SKLEARN_DATASETS[name]
        frame, target = loader()
        target = d.target or target
        task = d.task or default_task
        source = d.source
    else:
        # validate(): data.path is set when data.source is not, and data.target with it.
        assert d.path is not None and d.target is not None
        path = resolve_path(cfg, d.path)
        frame = read_table(path)
        target, task, source = d.target, d.task, str(d.path)
    return prepare(frame, target, task, d.val_fraction, d.test_fraction, scale or d.scale, d.seed, source,
                   target_scale or d.target_scale)


class Variants(dict[tuple[str | None, str | None], Dataset]):
    """The data prepared once per (scale, target_scale) that a sweep's space can choose."""

    def select(self, hp: dict[str, Any]) -> Dataset:
        key = (hp.get("scale"), hp.get("target_scale"))
        if key in self:
            return self[key]
        if len(self) == 1:
            return next(iter(self.values()))
        raise KeyError(f"no data prepared for scale={key[0]!r}, target_scale={key[1]!r}")


def load_variants(cfg: SweepConfig, scales: list[str], target_scales: list[str],
                  first: Dataset | None = None) -> Variants:
    """One prepared dataset per combination of feature and target scaling (``first`` reused)."""
    out = Variants()
    for s in scales:
        for t in target_scales:
            if first is not None and (first.scale, first.target_scale) == (s, t):
                out[(s, t)] = first
            else:
                out[(s, t)] = load(cfg, s, t)
    return out


def select(data: Dataset | Variants, hp: dict[str, Any]) -> Dataset:
    """The dataset a trial trains on: ``data`` itself, or its variant for the trial's scaling."""
    return data.select(hp) if isinstance(data, Variants) else data


# -- a data factory of the user's ----------------------------------------------------------------

SPLITS = ("train", "val", "test")


def call_factory(cfg: SweepConfig) -> Any:
    """Call ``data.factory`` with ``data.args`` (and ``seed``, ``val_fraction``, ``test_fraction``
    when it takes them and ``data.args`` does not set them).

    Raises:
        DataError: the factory raised (one line, naming it).
    """
    from orchestrator.config.imports import import_callable, project_on_path

    d = cfg.data
    project_on_path(getattr(cfg, "project", None))
    factory = import_callable(d.factory, "data.factory")
    kwargs = dict(d.args or {})
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for name in ("seed", "val_fraction", "test_fraction"):
        if name not in kwargs and (name in params or takes_any):
            kwargs[name] = getattr(d, name)
    try:
        return factory(**kwargs)
    except Exception as err:  # noqa: BLE001 - the user's code
        text = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
        raise DataError(f"data.factory: {d.factory} raised {type(err).__name__}"
                        f"{': ' + text[:300] if text else ''}") from None


def from_factory(cfg: SweepConfig, out: Any = None) -> Dataset:
    """The splits ``data.factory`` returns, checked and described.

    A factory returns ``{"train": ..., "val": ..., "test": ...}`` ("test" optional; a tuple in
    that order works too), each split either in-memory tensors or arrays ``(x, y)`` (``x`` may be
    a tuple of several inputs) or a torch ``Dataset`` whose items are ``(x, y)``. The mapping may
    also give ``classes`` (the labels, index = class id) or ``task``.

    Raises:
        DataError: a missing split, lengths that differ, samples whose shapes differ between
            splits, targets of the wrong kind: one line naming the split.
    """
    d = cfg.data
    where = f"data.factory: {d.factory}"
    out = call_factory(cfg) if out is None else out
    if isinstance(out, (tuple, list)) and 2 <= len(out) <= 3:
        out = dict(zip(SPLITS, out, strict=False))
    if not isinstance(out, dict):
        raise DataError(f"{where} returned a {type(out).__name__}; return {{'train': ..., 'val': ..., 'test': ...}} "
                        "(each (x, y) tensors or a torch Dataset of (x, y) samples)")
    unknown = sorted(set(out) - {*SPLITS, "classes", "task"})
    if unknown:
        raise DataError(f"{where} returned unknown key {unknown[0]!r}; valid: train, val, test, classes, task")
    for name in ("train", "val"):
        if out.get(name) is None:
            raise DataError(f"{where} returned no {name!r} split")
    extra = {k: out[k] for k in ("classes", "task") if out.get(k) is not None}
    splits = {name: out[name] for name in SPLITS if out.get(name) is not None}
    if all(_is_pair(v) and not isinstance(v[0], (tuple, list)) for v in splits.values()):
        return _from_arrays(cfg, where, splits, extra)
    return _from_sets(cfg, where, splits, extra)


def _is_pair(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2


def _is_torch_dataset(value: Any) -> bool:
    from torch.utils.data import Dataset as TorchDataset

    return isinstance(value, TorchDataset)


def _array(value: Any, what: str) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{what}: not an array or tensor ({type(value).__name__}: {err})") from None


def _task_and_classes(cfg: SweepConfig, where: str, y_train: np.ndarray, ys: list[np.ndarray],
                      extra: dict[str, Any]) -> tuple[str, list[Any]]:
    task = cfg.data.task or extra.get("task")
    if task is None:
        task = "classification" if np.issubdtype(y_train.dtype, np.integer) or y_train.dtype == bool else "regression"
    if task not in ("classification", "regression"):
        raise DataError(f"{where}: task must be classification or regression (got {task!r})")
    if task == "regression":
        return task, []
    for y in ys:
        if y.ndim != 1:
            raise DataError(f"{where}: classification targets are one class id per sample (shape (n,)), "
                            f"got shape {y.shape}")
        if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
            raise DataError(f"{where}: classification targets are class ids 0, 1, 2, ... (integers), "
                            f"got {y.dtype} values such as {y[:3].tolist()}")
    n_classes = int(max(int(y.max()) for y in ys if len(y)) + 1)
    if n_classes > MAX_INFERRED_CLASSES and not (cfg.data.task or extra.get("task") or extra.get("classes")):
        raise DataError(f"{where}: integer targets up to {n_classes - 1} were taken as {n_classes} classes; set "
                        "data.task: regression for a quantity (or classification, or return 'classes', for classes)")
    classes = list(extra.get("classes") or range(n_classes))
    if len(classes) < n_classes:
        raise DataError(f"{where}: 'classes' lists {len(classes)} labels but the targets go up to class id "
                        f"{n_classes - 1}")
    if len(classes) < 2:
        raise DataError(f"{where}: a single class; classification needs two or more")
    return task, classes


def _from_arrays(cfg: SweepConfig, where: str, splits: dict[str, Any], extra: dict[str, Any]) -> Dataset:
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (x, y) in splits.items():
        xa, ya = _array(x, f"{where}: {name} x"), _array(y, f"{where}: {name} y")
        if xa.ndim < 2:
            raise DataError(f"{where}: {name} x has shape {xa.shape}; expected (samples, ...) with one row per sample")
        if len(xa) != len(ya):
            raise DataError(f"{where}: {name} has {len(xa)} inputs but {len(ya)} targets")
        if ya.ndim == 2 and ya.shape[1] == 1:
            ya = ya[:, 0]
        arrays[name] = (xa, ya)
    shape = arrays["train"][0].shape[1:]
    for name, (xa, _) in arrays.items():
        if xa.shape[1:] != shape:
            raise DataError(f"{where}: {name} samples have shape {xa.shape[1:]}, train's have {shape}")
    if not len(arrays["train"][0]) or not len(arrays["val"][0]):
        raise DataError(f"{where}: the {'train' if not len(arrays['train'][0]) else 'val'} split is empty")
    y_train = arrays["train"][1]
    task, classes = _task_and_classes(cfg, where, y_train, [a[1] for a in arrays.values()], extra)
    x_test, y_test = arrays.get("test", (np.zeros((0, *shape), np.float32), y_train[:0]))

    def x_of(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) or a.dtype == bool else a

    def y_of(a: np.ndarray) -> np.ndarray:
        return a.astype(np.int64) if task == "classification" else a.astype(np.float32)

    h = hashlib.sha256(str(cfg.data.factory).encode())
    for name, (xa, ya) in arrays.items():
        h.update(name.encode() + np.ascontiguousarray(xa).tobytes() + np.ascontiguousarray(ya).tobytes())
    units = {}
    if task == "regression":
        units = {"y_val_units": arrays["val"][1].astype(np.float64), "y_test_units": y_test.astype(np.float64)}
    return Dataset(
        task=task, x_train=x_of(arrays["train"][0]), y_train=y_of(y_train),
        x_val=x_of(arrays["val"][0]), y_val=y_of(arrays["val"][1]), x_test=x_of(x_test), y_test=y_of(y_test),
        feature_names=[], classes=classes, scale="none", target_scale="none",
        target_std=(float(y_train.std()) or 1.0) if task == "regression" else 1.0,
        target_distinct=len(np.unique(y_train)), fingerprint=h.hexdigest()[:16],
        n_rows=sum(len(a[0]) for a in arrays.values()), source=str(cfg.data.factory), **units,
    )


def _sample(dataset: Any, where: str) -> tuple[Any, Any]:
    try:
        n = len(dataset)
    except TypeError:
        raise DataError(f"{where} has no length: a map-style torch Dataset (with __len__) is needed") from None
    if n == 0:
        raise DataError(f"{where} is empty")
    item = dataset[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise DataError(f"{where}: a sample is {type(item).__name__}; samples must be (x, y) pairs")
    return item[0], item[1]


def _from_sets(cfg: SweepConfig, where: str, splits: dict[str, Any], extra: dict[str, Any]) -> Dataset:
    import torch
    from torch.utils.data import TensorDataset

    sets: dict[str, Any] = {}
    for name, value in splits.items():
        if _is_torch_dataset(value):
            sets[name] = value
        elif isinstance(value, (tuple, list)) and len(value) == 2:  # (several inputs, y)
            xs = value[0] if isinstance(value[0], (tuple, list)) else (value[0],)
            tensors = [torch.as_tensor(_array(x, f"{where}: {name} x")) for x in xs]
            y = torch.as_tensor(_array(value[1], f"{where}: {name} y"))
            if any(len(t) != len(y) for t in tensors):
                raise DataError(f"{where}: {name} has inputs of lengths {[len(t) for t in tensors]} "
                                f"but {len(y)} targets")
            sets[name] = _MultiInput(TensorDataset(*tensors, y))
        else:
            raise DataError(f"{where}: the {name} split is a {type(value).__name__}; give (x, y) tensors or a "
                            "torch Dataset of (x, y) samples")
    shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
    for name, ds in sets.items():
        x, _ = _sample(ds, f"{where}: the {name} split")
        xs = x if isinstance(x, (tuple, list)) else (x,)
        shapes[name] = tuple(tuple(torch.as_tensor(t).shape) for t in xs)
    for name, sh in shapes.items():
        if sh != shapes["train"]:
            raise DataError(f"{where}: {name} samples have shape {_shape_text(sh)}, train's have "
                            f"{_shape_text(shapes['train'])}")
    # The training targets: for classes, class weights and the fingerprint (one pass over the split).
    labels = getattr(sets["train"], "targets", None)
    y_train = (_array(labels, f"{where}: train targets") if labels is not None
               else np.asarray([np.asarray(_y_of(sets["train"][i])) for i in range(len(sets["train"]))]))
    for name, ds in sets.items():
        if np.asarray(_y_of(ds[0])).size != 1:
            raise DataError(f"{where}: a {name} sample's target has shape {np.asarray(_y_of(ds[0])).shape}; one "
                            "number per sample (a class id, or a regression target)")
    ys = [y_train] + [np.atleast_1d(np.asarray(_y_of(ds[0]))).reshape(-1) for n, ds in sets.items() if n != "train"]
    if y_train.ndim == 2 and y_train.shape[1] == 1:
        y_train = y_train[:, 0]
    task, classes = _task_and_classes(cfg, where, y_train, [y_train, *ys[1:]], extra)
    if task == "classification":
        for target in ys[1:]:
            if not np.issubdtype(target.dtype, np.integer):
                raise DataError(f"{where}: classification targets are integer class ids, got {target.dtype}")
    h = hashlib.sha256(f"{cfg.data.factory}|{cfg.data.args}|{[len(ds) for ds in sets.values()]}".encode())
    h.update(np.ascontiguousarray(y_train).tobytes())
    for ds in sets.values():  # the inputs too: a few samples of each split, spread over it
        for i in np.linspace(0, len(ds) - 1, num=min(len(ds), 16)).astype(int):
            x = ds[int(i)][0]
            for t in x if isinstance(x, (tuple, list)) else (x,):
                h.update(np.ascontiguousarray(_array(t, where)).tobytes())
    empty = np.zeros((0,), np.float32)
    inputs = len(shapes["train"])
    return Dataset(
        task=task, x_train=None, y_train=y_train.astype(np.int64) if task == "classification" else y_train,  # type: ignore[arg-type]
        x_val=None, y_val=None, x_test=None, y_test=None,  # type: ignore[arg-type]
        feature_names=[], classes=classes, scale="none", target_scale="none",
        target_std=(float(y_train.std()) or 1.0) if task == "regression" else 1.0,
        target_distinct=len(np.unique(y_train)), fingerprint=h.hexdigest()[:16],
        n_rows=sum(len(ds) for ds in sets.values()), sets=sets,
        sample_shape=shapes["train"][0], inputs=inputs, source=str(cfg.data.factory),
        y_val_units=empty if task == "regression" else None,
    )


def _y_of(item: Any) -> Any:
    y = item[1]
    return y.detach().cpu().numpy() if hasattr(y, "detach") else y


def _shape_text(shapes: tuple[tuple[int, ...], ...]) -> str:
    return str(shapes[0]) if len(shapes) == 1 else " + ".join(str(s) for s in shapes)


class _MultiInput:
    """A TensorDataset of several inputs and a target, served as ((x1, x2, ...), y)."""

    def __init__(self, tensors: Any) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        *xs, y = self.tensors[i]
        return (tuple(xs) if len(xs) > 1 else xs[0]), y
