"""Tabular data: read once in the driver, split, encode and scale (fitted on train only), fingerprint.

The result is a :class:`Dataset` of float32 arrays that the sweep puts into Ray's object store
once; trials read it from there and never touch the source again.
"""

from __future__ import annotations

import hashlib
import logging
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
    # unit of val_loss) and the fitted target scaler (None: the model predicts the target as is).
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

    def to_target_units(self, pred: np.ndarray) -> np.ndarray:
        """Regression predictions in the target's own units (undo the target scaling)."""
        if self.target_scaler is None:
            return pred
        return self.target_scaler.inverse_transform(np.asarray(pred, np.float64).reshape(-1, 1)).ravel()

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

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


def _scaler(kind: str, n_rows: int) -> Any:
    from sklearn.preprocessing import MinMaxScaler, QuantileTransformer, StandardScaler

    if kind == "standard":
        return StandardScaler()
    if kind == "minmax":
        return MinMaxScaler()
    if kind == "quantile":
        return QuantileTransformer(n_quantiles=min(1000, max(10, n_rows)), output_distribution="uniform")
    return "passthrough"


def prepare(frame: pd.DataFrame, target: str, task: str | None = None, val_fraction: float = 0.2,
            test_fraction: float = 0.2, scale: str = "standard", seed: int = 0,
            source: str = "data", target_scale: str = "standard") -> Dataset:
    """Split, encode and scale a table. Everything is fitted on the training rows only.

    Numeric columns: missing values imputed with the training median plus a 0/1 indicator column,
    then scaled. String/categorical/bool columns: one-hot encoded (unknown categories at validation
    time encode as all zeros). Rows whose target is missing are dropped with a warning.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

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

    numeric = [c for c in x_frame.columns
               if pd.api.types.is_numeric_dtype(x_frame[c]) and not pd.api.types.is_bool_dtype(x_frame[c])]
    categorical = [c for c in x_frame.columns if c not in numeric]
    x_frame = x_frame.copy()
    for c in categorical:  # one dtype per column for the encoder: strings, missing as its own category
        x_frame[c] = x_frame[c].astype("string").fillna("<missing>").astype(object)
    transformers = []
    if numeric:
        transformers.append((
            "num",
            make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                          _scaler(scale, len(idx_train))),
            numeric,
        ))
    if categorical:
        transformers.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical))
    pre = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    x_train = pre.fit_transform(x_frame.iloc[idx_train]).astype(np.float32)
    x_val = pre.transform(x_frame.iloc[idx_val]).astype(np.float32)
    x_test = (pre.transform(x_frame.iloc[idx_test]).astype(np.float32) if len(idx_test)
              else np.zeros((0, x_train.shape[1]), np.float32))
    names = [str(c) for c in pre.get_feature_names_out()]

    scaler, units, y_model = None, {}, y_all
    if task == "regression":
        scaler = _scaler(target_scale, len(idx_train))
        if scaler == "passthrough":
            scaler = None
        else:
            scaler.fit(y_all[idx_train].reshape(-1, 1))
            y_model = scaler.transform(y_all.reshape(-1, 1)).ravel()
        y_model = y_model.astype(np.float32)
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
        target_scaler=scaler, scale=scale, target_scale=target_scale,
        target_distinct=int(y_raw.nunique()), target_integral=integral,
        fingerprint=fp, n_rows=n, **units,
    )


def load(cfg: SweepConfig, scale: str | None = None, target_scale: str | None = None) -> Dataset:
    """Load and prepare the data named by a sweep config (``cfg.data``), optionally with other
    feature and target scalings than the config's."""
    from orchestrator.config.load import resolve_path

    d = cfg.data
    task: str | None
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
