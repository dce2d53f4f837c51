"""A table's fitted preprocessing as plain data: fitted once with scikit-learn, applied with numpy.

:class:`Preprocessing` is the feature transform ``prepare`` fits on the training rows (numeric
columns: median imputation with a 0/1 missing indicator, then a scaler; other columns: one-hot),
and :class:`TargetScaling` a regression target's scaling. Both keep only numbers, strings and
lists, so they export with a model as JSON (``to_dict`` / ``from_dict``) and load back without
running anything read from disk. Training and serving apply the same ``transform``; its output
matches scikit-learn's fitted transformers to float rounding.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.errors import DataError

# The category a missing value of a categorical column is encoded as.
MISSING = "<missing>"
SCALE_KINDS = ("standard", "minmax", "quantile", "none")
FORMAT = "orch.preprocessing"
TARGET_FORMAT = "orch.target_scaling"
VERSION = 1


def make_scaler(kind: str, n_rows: int) -> Any:
    """The scikit-learn scaler for ``kind`` (standard, minmax, quantile; anything else: "passthrough")."""
    from sklearn.preprocessing import MinMaxScaler, QuantileTransformer, StandardScaler

    if kind == "standard":
        return StandardScaler()
    if kind == "minmax":
        return MinMaxScaler()
    if kind == "quantile":
        return QuantileTransformer(n_quantiles=min(1000, max(10, n_rows)), output_distribution="uniform")
    return "passthrough"


def is_numeric(column: pd.Series) -> bool:
    """Whether a column is imputed and scaled (numeric and not bool) rather than one-hot encoded."""
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def as_strings(column: pd.Series) -> np.ndarray:
    """A categorical column as the strings its one-hot encoding compares (missing: ``<missing>``)."""
    return column.astype("string").fillna(MISSING).to_numpy(dtype=object)


def as_float(column: pd.Series, name: str, where: str = "input") -> np.ndarray:
    """A numeric column as float64 with NaN for missing values; numbers written as text are parsed.

    Raises:
        DataError: text that is not a number, or an infinite value (one line naming the column).
    """
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = column.astype("string").str.strip()
        blank = text.isna() | (text == "")
        parsed = pd.to_numeric(text.mask(blank), errors="coerce")
        bad = parsed.isna() & ~blank
        if bad.any():
            example = str(text[bad].iloc[0])[:40]
            raise DataError(f"{where}: column {name!r} is numeric but holds text such as {example!r} "
                            f"({int(bad.sum())} value{'s' if bad.sum() > 1 else ''})")
        values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isinf(values).any():
        raise DataError(f"{where}: column {name!r} holds an infinite value; use a finite number or leave it empty")
    return values


# -- scalers as data -----------------------------------------------------------------------------


def _scaler_params(kind: str, fitted: Any) -> dict[str, Any]:
    """A fitted scikit-learn scaler's parameters (numpy arrays, one entry per column)."""
    if kind == "standard":
        return {"mean": np.asarray(fitted.mean_, np.float64), "scale": np.asarray(fitted.scale_, np.float64)}
    if kind == "minmax":
        return {"scale": np.asarray(fitted.scale_, np.float64), "min": np.asarray(fitted.min_, np.float64)}
    if kind == "quantile":
        return {"references": np.asarray(fitted.references_, np.float64),
                "quantiles": np.asarray(fitted.quantiles_, np.float64)}  # (n_quantiles, columns)
    return {}


def _scale(kind: str, p: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Apply a scaler to ``x`` (rows x columns, float64) as scikit-learn's ``transform`` does."""
    if kind == "standard":
        return (x - p["mean"]) / p["scale"]
    if kind == "minmax":
        return x * p["scale"] + p["min"]
    if kind == "quantile":
        out = np.empty_like(x)
        refs = p["references"]
        for j in range(x.shape[1]):
            out[:, j] = _quantile_col(x[:, j], p["quantiles"][:, j], refs)
        return out
    return x


def _unscale(kind: str, p: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Undo a scaler as scikit-learn's ``inverse_transform`` does."""
    if kind == "standard":
        return x * p["scale"] + p["mean"]
    if kind == "minmax":
        return (x - p["min"]) / p["scale"]
    if kind == "quantile":
        out = np.empty_like(x)
        refs = p["references"]
        for j in range(x.shape[1]):
            out[:, j] = _quantile_col_inverse(x[:, j], p["quantiles"][:, j], refs)
        return out
    return x


def _quantile_col(col: np.ndarray, quantiles: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """QuantileTransformer's forward map of one column to a uniform output."""
    col = col.copy()
    with np.errstate(invalid="ignore"):
        lower = col == quantiles[0]
        upper = col == quantiles[-1]
    finite = ~np.isnan(col)
    v = col[finite]
    # Interpolate upwards and downwards and average: repeated quantiles map to their middle.
    col[finite] = 0.5 * (np.interp(v, quantiles, refs) - np.interp(-v, -quantiles[::-1], -refs[::-1]))
    col[upper] = 1.0
    col[lower] = 0.0
    return col


def _quantile_col_inverse(col: np.ndarray, quantiles: np.ndarray, refs: np.ndarray) -> np.ndarray:
    col = col.copy()
    with np.errstate(invalid="ignore"):
        lower = col == 0.0
        upper = col == 1.0
    finite = ~np.isnan(col)
    col[finite] = np.interp(col[finite], refs, quantiles)
    col[upper] = quantiles[-1]
    col[lower] = quantiles[0]
    return col


def _scaler_to_dict(kind: str, p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind}
    if kind == "quantile":
        out["references"] = _floats(p["references"])
        out["quantiles"] = [_floats(p["quantiles"][:, j]) for j in range(p["quantiles"].shape[1])]  # per column
    else:
        out.update({k: _floats(v) for k, v in p.items()})
    return out


def _scaler_from_dict(d: Any, width: int, what: str) -> tuple[str, dict[str, Any]]:
    d = _mapping(d, what)
    kind = d.get("kind")
    if kind not in SCALE_KINDS:
        raise DataError(f"{what}: kind must be one of {', '.join(SCALE_KINDS)} (got {kind!r})")
    p: dict[str, Any] = {}
    if kind == "quantile":
        refs = _array(d.get("references"), f"{what}.references")
        cols = d.get("quantiles")
        if not isinstance(cols, list) or len(cols) != width:
            raise DataError(f"{what}.quantiles: expected {width} lists of quantiles (one per column)")
        q = np.empty((len(refs), width), np.float64)
        for j, c in enumerate(cols):
            q[:, j] = _array(c, f"{what}.quantiles[{j}]", len(refs))
        p = {"references": refs, "quantiles": q}
    elif kind != "none":
        for key in ("mean", "scale") if kind == "standard" else ("scale", "min"):
            p[key] = _array(d.get(key), f"{what}.{key}", width)
    return kind, p


# -- plain-data helpers ----------------------------------------------------------------------------


def _floats(values: Any) -> list[float | None]:
    """Floats for JSON: NaN and infinities as None."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, np.float64).ravel().tolist()]


def _mapping(d: Any, what: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise DataError(f"{what}: expected a mapping, got {type(d).__name__}")
    return d


def _array(values: Any, what: str, length: int | None = None) -> np.ndarray:
    if not isinstance(values, list) or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                                               for v in values):
        raise DataError(f"{what}: expected a list of numbers")
    if length is not None and len(values) != length:
        raise DataError(f"{what}: expected {length} numbers, got {len(values)}")
    return np.array([np.nan if v is None else float(v) for v in values], np.float64)


def _strings(values: Any, what: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise DataError(f"{what}: expected a list of strings")
    return list(values)


def _check_format(d: Any, fmt: str, what: str) -> dict[str, Any]:
    d = _mapping(d, what)
    if d.get("format") != fmt:
        raise DataError(f"{what}: not a {fmt} mapping (format: {d.get('format')!r})")
    if d.get("version") != VERSION:
        raise DataError(f"{what}: version {d.get('version')!r} is not supported (this orch reads version {VERSION})")
    return d


def _names(names: list[str], limit: int = 20) -> str:
    text = ", ".join(names[:limit])
    return text + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# -- the feature transform -------------------------------------------------------------------------


class Preprocessing:
    """A fitted feature transform: plain data, applied with numpy.

    Output columns (in this order, named by ``feature_names``): the numeric columns with missing
    values replaced by the training median, then a 0/1 indicator for each numeric column that had
    missing training values, all through the scaler; then for each other column a one-hot block of
    its training categories (values cast to text, missing as ``<missing>``; a value not seen in
    training encodes as all zeros).
    """

    def __init__(self, columns: list[str], numeric: list[str], medians: np.ndarray, indicators: list[bool],
                 scale: str, scaler: dict[str, Any], categories: dict[str, list[str]],
                 feature_names: list[str]) -> None:
        self.columns = list(columns)  # every input column, in the training table's order
        self.numeric = list(numeric)
        self.medians = np.asarray(medians, np.float64)
        self.indicators = list(indicators)  # per numeric column: has a missing-indicator column
        self.scale = scale
        self.scaler = scaler
        self.categories = dict(categories)  # categorical column -> its categories, in output order
        self.feature_names = list(feature_names)

    @property
    def categorical(self) -> list[str]:
        return list(self.categories)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def __repr__(self) -> str:
        return (f"Preprocessing({len(self.numeric)} numeric, {len(self.categories)} categorical columns -> "
                f"{self.n_features} features, scale={self.scale!r})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Preprocessing) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def fit(cls, x_frame_train: pd.DataFrame, scale: str) -> Preprocessing:
        """Fit on the training rows' feature columns with scikit-learn and keep the fitted numbers.

        ``scale``: standard, minmax, quantile, or none (anything else is taken as none).
        """
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder

        scale = scale if scale in SCALE_KINDS else "none"
        columns = [str(c) for c in x_frame_train.columns]
        dup = sorted({c for c in columns if columns.count(c) > 1})
        if dup:
            raise DataError(f"data: column name{'s' if len(dup) > 1 else ''} "
                            f"{', '.join(map(repr, dup))} appear{'' if len(dup) > 1 else 's'} more than once")
        numeric = [c for c, orig in zip(columns, x_frame_train.columns, strict=True) if is_numeric(x_frame_train[orig])]
        categorical = [c for c in columns if c not in numeric]
        work = pd.DataFrame(
            {c: as_float(x_frame_train[orig], c, "data") if c in numeric else as_strings(x_frame_train[orig])
             for c, orig in zip(columns, x_frame_train.columns, strict=True)},
            index=x_frame_train.index,
        )
        n_rows = len(work)
        transformers = []
        if numeric:
            transformers.append((
                "num",
                make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                              make_scaler(scale, n_rows)),
                numeric,
            ))
        if categorical:
            transformers.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical))
        pre = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
        pre.fit(work)

        medians = np.zeros(len(numeric))
        indicators = [False] * len(numeric)
        scaler: dict[str, Any] = {}
        if numeric:
            pipe = pre.named_transformers_["num"]
            imputer = pipe.steps[0][1]
            medians = np.asarray(imputer.statistics_, np.float64)
            medians = np.where(np.isnan(medians), 0.0, medians)  # all-missing columns impute 0
            if imputer.indicator_ is not None:
                for j in imputer.indicator_.features_:
                    indicators[int(j)] = True
            scaler = _scaler_params(scale, pipe.steps[1][1])
        categories: dict[str, list[str]] = {}
        if categorical:
            encoder = pre.named_transformers_["cat"]
            categories = {c: [str(v) for v in cats] for c, cats in zip(categorical, encoder.categories_, strict=True)}
        names = [str(c) for c in pre.get_feature_names_out()]
        return cls(columns, numeric, medians, indicators, scale, scaler, categories, names)

    # -- applying it

    def _inputs(self, frame: pd.DataFrame) -> dict[str, pd.Series]:
        """The frame's columns by name (any order, extra columns ignored)."""
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"input: expected a table (pandas DataFrame), got {type(frame).__name__}")
        by_name: dict[str, Any] = {}
        for c in frame.columns:
            by_name.setdefault(str(c), c)
        missing = [c for c in self.columns if c not in by_name]
        if missing:
            what = (f"column {missing[0]!r} is" if len(missing) == 1
                    else f"columns {_names([repr(c) for c in missing], 10)} are")
            raise DataError(f"input: {what} missing (the model was trained on: {_names(self.columns)})")
        out = {}
        for c in self.columns:
            col = frame[by_name[c]]
            if isinstance(col, pd.DataFrame):
                raise DataError(f"input: column {c!r} appears more than once")
            out[c] = col
        return out

    def _codes(self, cols: dict[str, pd.Series]) -> dict[str, np.ndarray]:
        """Per categorical column, each row's category index (-1: not seen in training)."""
        return {c: pd.Categorical(as_strings(cols[c]), categories=cats).codes.astype(np.int64)
                for c, cats in self.categories.items()}

    def transform(self, frame: pd.DataFrame, unseen: dict[str, int] | None = None) -> np.ndarray:
        """The model's input features for the rows of ``frame`` (float32, rows x ``n_features``).

        ``unseen``: a dict to receive, per categorical column, how many values were not seen in
        training (those encode as all zeros); only columns with such values are added.

        Raises:
            DataError: a missing input column, or text that is not a number in a numeric column.
        """
        cols = self._inputs(frame)
        n = len(frame)
        blocks: list[np.ndarray] = []
        if self.numeric:
            x = np.empty((n, len(self.numeric)), np.float64)
            for j, c in enumerate(self.numeric):
                x[:, j] = as_float(cols[c], c)
            miss = np.isnan(x)
            indicator = miss[:, np.flatnonzero(self.indicators)].astype(np.float64)
            x = np.where(miss, self.medians, x)
            blocks.append(_scale(self.scale, self.scaler, np.hstack([x, indicator])))
        for c, codes in self._codes(cols).items():
            onehot = np.zeros((n, len(self.categories[c])), np.float64)
            seen = codes >= 0
            onehot[np.flatnonzero(seen), codes[seen]] = 1.0
            blocks.append(onehot)
            if unseen is not None and not seen.all():
                unseen[c] = unseen.get(c, 0) + int((~seen).sum())
        if not blocks:
            return np.zeros((n, 0), np.float32)
        return np.hstack(blocks).astype(np.float32)

    def unseen(self, frame: pd.DataFrame) -> dict[str, int]:
        """Per categorical column, how many of ``frame``'s values were not seen in training (zero counts left out)."""
        counts = {c: int((codes < 0).sum()) for c, codes in self._codes(self._inputs(frame)).items()}
        return {c: k for c, k in counts.items() if k}

    # -- as plain data

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe mapping (dicts, lists, str, float, bool, None) that ``from_dict`` reads back."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "columns": list(self.columns),
            "numeric": [{"name": c, "median": m, "indicator": bool(ind)}
                        for c, m, ind in zip(self.numeric, _floats(self.medians), self.indicators, strict=True)],
            "scaler": _scaler_to_dict(self.scale, self.scaler),
            "categorical": [{"name": c, "categories": list(cats)} for c, cats in self.categories.items()],
            "feature_names": list(self.feature_names),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Read ``to_dict``'s mapping back (checked; nothing in it is run).

        Raises:
            DataError: a mapping of another format or version, or one whose parts do not fit together.
        """
        what = "preprocessing"
        d = _check_format(d, FORMAT, what)
        columns = _strings(d.get("columns"), f"{what}.columns")
        numeric, medians, indicators = [], [], []
        entries = d.get("numeric")
        if not isinstance(entries, list):
            raise DataError(f"{what}.numeric: expected a list")
        for i, e in enumerate(entries):
            e = _mapping(e, f"{what}.numeric[{i}]")
            name, median, ind = e.get("name"), e.get("median"), e.get("indicator")
            if not isinstance(name, str) or not isinstance(ind, bool):
                raise DataError(f"{what}.numeric[{i}]: expected a name (text) and indicator (true/false)")
            median = 0.0 if median is None else median  # an all-missing column imputes 0
            if isinstance(median, bool) or not isinstance(median, (int, float)):
                raise DataError(f"{what}.numeric[{i}].median: expected a number")
            numeric.append(name)
            medians.append(float(median))
            indicators.append(ind)
        width = len(numeric) + sum(indicators)
        scale, scaler = _scaler_from_dict(d.get("scaler", {"kind": "none"}), width, f"{what}.scaler")
        entries = d.get("categorical")
        if not isinstance(entries, list):
            raise DataError(f"{what}.categorical: expected a list")
        categories: dict[str, list[str]] = {}
        for i, e in enumerate(entries):
            e = _mapping(e, f"{what}.categorical[{i}]")
            name = e.get("name")
            if not isinstance(name, str):
                raise DataError(f"{what}.categorical[{i}].name: expected text")
            categories[name] = _strings(e.get("categories"), f"{what}.categorical[{i}].categories")
        names = _strings(d.get("feature_names"), f"{what}.feature_names")
        used = numeric + list(categories)
        if sorted(used) != sorted(columns) or len(set(used)) != len(used):
            raise DataError(f"{what}: the numeric and categorical columns do not match 'columns'")
        n_out = width + sum(len(c) for c in categories.values())
        if len(names) != n_out:
            raise DataError(f"{what}.feature_names: {len(names)} names for {n_out} features")
        return cls(columns, numeric, np.array(medians, np.float64), indicators, scale, scaler, categories, names)


# -- the regression target -------------------------------------------------------------------------


class TargetScaling:
    """A regression target's fitted scaling (standard, minmax, quantile or none), as plain data.

    ``transform`` maps targets to what the model learns, ``inverse`` maps predictions back to the
    target's units; both keep the input's shape and return float64.
    """

    def __init__(self, kind: str, params: dict[str, Any] | None = None) -> None:
        self.kind = kind if kind in SCALE_KINDS else "none"
        self.params = params or {}

    def __repr__(self) -> str:
        return f"TargetScaling({self.kind!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TargetScaling) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def fit(cls, y_train: np.ndarray, kind: str) -> TargetScaling:
        """Fit on the training targets with scikit-learn (quantile: as many quantiles as
        ``min(1000, max(10, rows))``)."""
        y = np.asarray(y_train, np.float64).reshape(-1, 1)
        kind = kind if kind in SCALE_KINDS else "none"
        scaler = make_scaler(kind, len(y))
        if scaler == "passthrough":
            return cls("none")
        scaler.fit(y)
        return cls(kind, _scaler_params(kind, scaler))

    def _apply(self, y: np.ndarray, fn: Any) -> np.ndarray:
        y = np.asarray(y, np.float64)
        if self.kind == "none":
            return y.copy()
        return fn(self.kind, self.params, y.reshape(-1, 1)).reshape(y.shape)

    def transform(self, y: np.ndarray) -> np.ndarray:
        return self._apply(y, _scale)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return self._apply(y, _unscale)

    inverse_transform = inverse  # scikit-learn's name, for code written against a fitted scaler

    def to_dict(self) -> dict[str, Any]:
        return {"format": TARGET_FORMAT, "version": VERSION, **_scaler_to_dict(self.kind, self.params)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetScaling:
        """Read ``to_dict``'s mapping back (checked).

        Raises:
            DataError: a mapping of another format or version, or malformed parameters.
        """
        d = _check_format(d, TARGET_FORMAT, "target_scaling")
        kind, params = _scaler_from_dict({k: v for k, v in d.items() if k not in ("format", "version")}, 1,
                                         "target_scaling")
        return cls(kind, params)
