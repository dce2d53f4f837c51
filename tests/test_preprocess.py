"""The fitted preprocessing as plain data: the same numbers as scikit-learn, a JSON round trip,
clear errors for a missing column or text in a numeric one, and prepare() unchanged."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder

from orchestrator.errors import DataError
from orchestrator.train import data
from orchestrator.train.preprocess import Preprocessing, TargetScaling, make_scaler

SCALES = ("standard", "minmax", "quantile", "none")


def sklearn_scaler(kind: str, n_rows: int):
    return make_scaler(kind, n_rows)  # the scaler prepare fits (sklearn's own classes)

def reference(train: pd.DataFrame, scale: str) -> tuple[ColumnTransformer, list[str]]:
    """The scikit-learn pipeline the preprocessing stands for, fitted on ``train``."""
    numeric = [c for c in train.columns
               if pd.api.types.is_numeric_dtype(train[c]) and not pd.api.types.is_bool_dtype(train[c])]
    categorical = [c for c in train.columns if c not in numeric]
    transformers = []
    if numeric:
        transformers.append(("num", make_pipeline(
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            sklearn_scaler(scale, len(train))), numeric))
    if categorical:
        transformers.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical))
    pre = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    pre.fit(strings(train, categorical))
    return pre, categorical


def strings(frame: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    for c in categorical:
        frame[c] = frame[c].astype("string").fillna("<missing>").astype(object)
    return frame


def sk_transform(pre: ColumnTransformer, categorical: list[str], frame: pd.DataFrame) -> np.ndarray:
    return pre.transform(strings(frame, categorical)).astype(np.float32)


def make_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "age": rng.normal(40, 12, n),
        "rooms": rng.integers(1, 6, n).astype(float),  # few distinct values: repeated quantiles
        "empty": np.full(n, np.nan),  # all missing: imputed 0, with an indicator
        "count": rng.integers(0, 1000, n),  # int, never missing: no indicator
        "flag": rng.random(n) > 0.5,  # bool: one-hot
        "color": rng.choice(np.array(["red", "green", "blue", None], dtype=object), n),
        "const": np.full(n, 3.0),
    })
    frame.loc[rng.random(n) < 0.2, "age"] = np.nan
    frame.loc[rng.random(n) < 0.1, "rooms"] = np.nan
    return frame


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return make_frame(240, 0)


@pytest.fixture(scope="module")
def serve() -> pd.DataFrame:
    """Rows unlike the training ones: out-of-range numbers, an unseen color, gaps where training had none."""
    frame = make_frame(60, 1)
    frame.loc[:4, "age"] = [-500.0, 500.0, np.nan, 0.0, 1e6]
    frame.loc[:2, "color"] = "purple"
    frame.loc[5:7, "count"] = np.nan
    frame.loc[8, "const"] = 2.0
    frame.loc[9, "const"] = 4.0
    return frame


@pytest.mark.parametrize("scale", SCALES)
def test_transform_matches_sklearn(train: pd.DataFrame, serve: pd.DataFrame, scale: str) -> None:
    ref, categorical = reference(train, scale)
    pre = Preprocessing.fit(train, scale)
    assert pre.feature_names == [str(c) for c in ref.get_feature_names_out()]
    assert "missingindicator_empty" in pre.feature_names and "missingindicator_count" not in pre.feature_names
    for frame in (train, serve):
        ours = pre.transform(frame)
        assert ours.dtype == np.float32 and ours.shape == (len(frame), pre.n_features)
        np.testing.assert_allclose(ours, sk_transform(ref, categorical, frame), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", SCALES)
def test_json_round_trip(train: pd.DataFrame, serve: pd.DataFrame, scale: str) -> None:
    pre = Preprocessing.fit(train, scale)
    text = json.dumps(pre.to_dict(), allow_nan=False)  # strict JSON: no NaN anywhere
    back = Preprocessing.from_dict(json.loads(text))
    assert back == pre and back.feature_names == pre.feature_names
    np.testing.assert_array_equal(back.transform(serve), pre.transform(serve))
    assert pickle.loads(pickle.dumps(back)) == pre


def test_dict_format(train: pd.DataFrame) -> None:
    d = Preprocessing.fit(train, "standard").to_dict()
    assert d["format"] == "orch.preprocessing" and d["version"] == 1
    assert d["columns"] == list(train.columns)
    by_name = {e["name"]: e for e in d["numeric"]}
    assert by_name["empty"] == {"name": "empty", "median": 0.0, "indicator": True}
    assert by_name["count"]["indicator"] is False
    assert d["scaler"]["kind"] == "standard" and len(d["scaler"]["mean"]) == len(d["numeric"]) + 3
    assert {"name": "color", "categories": ["<missing>", "blue", "green", "red"]} in d["categorical"]


def test_column_order_and_extra_columns_do_not_matter(train: pd.DataFrame, serve: pd.DataFrame) -> None:
    pre = Preprocessing.fit(train, "quantile")
    shuffled = serve[list(reversed(serve.columns))].assign(extra="ignored")
    np.testing.assert_array_equal(pre.transform(shuffled), pre.transform(serve))


def test_missing_column_is_named(train: pd.DataFrame, serve: pd.DataFrame) -> None:
    pre = Preprocessing.fit(train, "standard")
    with pytest.raises(DataError, match=r"^input: column 'age' is missing \(the model was trained on: age, rooms,"):
        pre.transform(serve.drop(columns=["age"]))
    with pytest.raises(DataError, match=r"columns 'age', 'color' are missing") as err:
        pre.transform(serve.drop(columns=["age", "color"]))
    assert "\n" not in str(err.value)


def test_unseen_category_encodes_as_zeros(train: pd.DataFrame, serve: pd.DataFrame) -> None:
    pre = Preprocessing.fit(train, "standard")
    block = [i for i, name in enumerate(pre.feature_names) if name.startswith("color_")]
    assert len(block) == 4
    counts: dict[str, int] = {}
    x = pre.transform(serve, unseen=counts)
    assert counts == {"color": 3} == pre.unseen(serve)
    assert (x[:3][:, block] == 0).all()
    assert (x[3:][:, block].sum(axis=1) == 1).all()


def test_numbers_as_text(train: pd.DataFrame, serve: pd.DataFrame) -> None:
    pre = Preprocessing.fit(train, "minmax")
    text = serve.copy()
    text["age"] = [None if pd.isna(v) else f" {v!r} " for v in serve["age"]]
    text["count"] = serve["count"].astype("string")
    np.testing.assert_array_equal(pre.transform(text), pre.transform(serve))
    text.loc[7, "age"] = "forty"
    with pytest.raises(DataError, match=r"^input: column 'age' is numeric but holds text such as 'forty'"):
        pre.transform(text)


def test_bad_dict_is_a_data_error(train: pd.DataFrame) -> None:
    d = Preprocessing.fit(train, "standard").to_dict()
    with pytest.raises(DataError, match="format"):
        Preprocessing.from_dict({**d, "format": "other"})
    with pytest.raises(DataError, match="scaler.mean"):
        Preprocessing.from_dict({**d, "scaler": {**d["scaler"], "mean": d["scaler"]["mean"][:-1]}})
    with pytest.raises(DataError, match="feature_names"):
        Preprocessing.from_dict({**d, "feature_names": d["feature_names"][1:]})


@pytest.mark.parametrize("kind", SCALES)
def test_target_scaling(kind: str) -> None:
    rng = np.random.default_rng(3)
    y_train = np.round(rng.gamma(2.0, 50.0, 300), 1)  # skewed, with ties
    y_new = np.concatenate([rng.gamma(2.0, 50.0, 50), [-10.0, 0.0, 5000.0]])
    scaling = TargetScaling.fit(y_train, kind)
    back = TargetScaling.from_dict(json.loads(json.dumps(scaling.to_dict(), allow_nan=False)))
    assert back == scaling and back.kind == kind
    sk = sklearn_scaler(kind, len(y_train))
    for y in (y_train, y_new):
        z = back.transform(y)
        assert z.dtype == np.float64 and z.shape == y.shape
        expect = y if sk == "passthrough" else sk.fit(y_train.reshape(-1, 1)).transform(y.reshape(-1, 1)).ravel()
        np.testing.assert_allclose(z, expect, rtol=0, atol=1e-9)
        undone = expect if sk == "passthrough" else sk.inverse_transform(expect.reshape(-1, 1)).ravel()
        np.testing.assert_allclose(back.inverse(z), undone, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(back.inverse(back.transform(y_train)), y_train, rtol=1e-9)


def test_prepare_matches_sklearn_on_a_bundled_dataset() -> None:
    frame = datasets.load_diabetes(as_frame=True).frame
    frame["sex"] = np.where(frame["sex"] > 0, "m", "f").astype(object)
    frame.loc[frame.index[::7], "bmi"] = np.nan
    frame.loc[frame.index[::11], "sex"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = data.prepare(frame, "target", "regression", 0.2, 0.2, scale="quantile", seed=3, target_scale="minmax")

    # The same split as prepare's, then the scikit-learn pipeline prepare used to fit.
    idx_train, rest = train_test_split(np.arange(len(frame)), test_size=0.4, random_state=3)
    idx_val, idx_test = train_test_split(rest, test_size=0.5, random_state=3)
    x = frame.drop(columns=["target"])
    ref, categorical = reference(x.iloc[idx_train], "quantile")
    assert ds.feature_names == [str(c) for c in ref.get_feature_names_out()]
    for split, idx in (("train", idx_train), ("val", idx_val), ("test", idx_test)):
        np.testing.assert_allclose(getattr(ds, f"x_{split}"), sk_transform(ref, categorical, x.iloc[idx]),
                                   rtol=0, atol=1e-6)
    y = frame["target"].to_numpy(np.float64)
    target = MinMaxScaler().fit(y[idx_train].reshape(-1, 1))
    np.testing.assert_allclose(ds.y_val, target.transform(y[idx_val].reshape(-1, 1)).ravel(), atol=1e-6)
    np.testing.assert_allclose(ds.to_target_units(ds.y_val), y[idx_val], rtol=1e-6)  # float32 targets
    assert ds.target_scaling is ds.target_scaler and ds.target_scaling.kind == "minmax"

    # The fitted transform travels with the dataset (pickled by Ray) and serves raw rows as prepare did.
    back = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(back.preprocessing.transform(x.iloc[idx_test]), ds.x_test)
