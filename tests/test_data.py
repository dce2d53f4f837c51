"""The data pipeline: read, drop missing targets, split, encode, impute, scale, fingerprint."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from orchestrator.errors import DataError
from orchestrator.train import data
from orchestrator.tune import plan
from tests.conftest import CONFIG, assert_user_error, cli

N = 600
MISSING_TARGET = 6
COLORS = ["red", "green", "blue"]


def make_frame(seed: int = 0) -> pd.DataFrame:
    """Three features (a string categorical, a numeric with gaps, a plain numeric) and a
    70/30 two-class target with a few missing labels."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "color": rng.choice(COLORS, N),
        "size": rng.normal(10.0, 3.0, N),
        "weight": rng.normal(50.0, 10.0, N),
        "label": rng.choice(["yes", "no"], N, p=[0.7, 0.3]),
    })
    frame.loc[rng.choice(N, 60, replace=False), "size"] = np.nan
    frame["label"] = frame["label"].astype(object)
    frame.loc[rng.choice(N, MISSING_TARGET, replace=False), "label"] = None
    return frame


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


def prepare(frame: pd.DataFrame, **kw) -> data.Dataset:
    kw = {"target": "label", "val_fraction": 0.2, "test_fraction": 0.1, "seed": 0, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return data.prepare(frame, **kw)


def write_config(d: Path, table: str, target: str = "label", **data_kw) -> Path:
    path = d / f"{Path(table).stem}.yaml"
    path.write_text(yaml.safe_dump({
        "study": "table-study",
        "data": {"path": table, "target": target, **data_kw},
        "model": {"name": "mlp"},
        "search_space": None,
    }))
    return path


def test_missing_targets_dropped_with_warning(frame: pd.DataFrame) -> None:
    with pytest.warns(UserWarning, match=rf"dropped {MISSING_TARGET} rows with a missing target 'label'"):
        ds = data.prepare(frame, "label", seed=0)
    assert ds.n_rows == N - MISSING_TARGET
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == N - MISSING_TARGET
    assert ds.task == "classification"
    assert ds.classes == ["no", "yes"]
    assert set(np.unique(ds.y_train)) == {0, 1}
    assert ds.y_train.dtype == np.int64


def test_encoding_one_hot_and_missing_indicator(frame: pd.DataFrame) -> None:
    ds = prepare(frame)
    names = ds.feature_names
    assert ds.x_train.shape[1] == len(names) == ds.n_features
    onehot = [f"color_{c}" for c in sorted(COLORS)]
    assert set(onehot) <= set(names)
    assert "missingindicator_size" in names
    assert "color" not in names and "label" not in names
    for x in (ds.x_train, ds.x_val, ds.x_test):
        assert x.dtype == np.float32
        assert np.isfinite(x).all()
        cols = x[:, [names.index(c) for c in onehot]]
        assert set(np.unique(cols)) == {0.0, 1.0}
        np.testing.assert_array_equal(cols.sum(axis=1), 1.0)  # exactly one colour per row
    # The indicator takes two values, and is set on about a tenth of the rows (60 of 600 missing).
    ind = np.concatenate([ds.x_train, ds.x_val, ds.x_test])[:, names.index("missingindicator_size")]
    values = np.unique(ind)
    assert len(values) == 2
    assert 40 <= int((ind == values.max()).sum()) <= 80
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert not np.isnan(y.astype(float)).any()


def test_scaling_is_fitted_on_train_rows_only(frame: pd.DataFrame) -> None:
    ds = prepare(frame)
    allx = np.concatenate([ds.x_train, ds.x_val, ds.x_test])
    for name in ("size", "weight"):
        j = ds.feature_names.index(name)
        assert abs(ds.x_train[:, j].mean()) < 1e-5
        assert abs(ds.x_train[:, j].std() - 1.0) < 1e-3
        # Fitted on all rows, val and the whole table would also be centred exactly.
        assert abs(ds.x_val[:, j].mean()) > 1e-3
        assert abs(allx[:, j].mean()) > 1e-4


def test_minmax_scaling_on_train(frame: pd.DataFrame) -> None:
    ds = prepare(frame, scale="minmax")
    j = ds.feature_names.index("weight")
    assert ds.x_train[:, j].min() == pytest.approx(0.0, abs=1e-6)
    assert ds.x_train[:, j].max() == pytest.approx(1.0, abs=1e-6)


def test_split_sizes_and_stratification(frame: pd.DataFrame) -> None:
    ds = prepare(frame, val_fraction=0.2, test_fraction=0.1)
    n = N - MISSING_TARGET
    assert abs(len(ds.y_val) - 0.2 * n) <= 1
    assert abs(len(ds.y_test) - 0.1 * n) <= 1
    assert len(ds.y_train) == n - len(ds.y_val) - len(ds.y_test)
    y_all = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    p_all = y_all.mean()
    for y in (ds.y_train, ds.y_val, ds.y_test):
        # Stratified: each split's share of class 1 is the table's, up to one row of rounding.
        assert abs(y.mean() - p_all) <= 1.0 / len(y) + 1e-9, (y.mean(), p_all)


def test_no_test_split(frame: pd.DataFrame) -> None:
    ds = prepare(frame, val_fraction=0.25, test_fraction=0.0)
    assert len(ds.y_test) == 0 and ds.x_test.shape == (0, ds.n_features)
    assert abs(len(ds.y_val) - 0.25 * (N - MISSING_TARGET)) <= 1


def test_same_seed_same_split_and_fingerprint(frame: pd.DataFrame) -> None:
    a, b = prepare(frame, seed=7), prepare(frame.copy(), seed=7)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16

    c = prepare(frame, seed=8)
    assert c.fingerprint == a.fingerprint  # the data did not change, only the split
    assert not np.array_equal(c.y_train, a.y_train) or not np.array_equal(c.x_train, a.x_train)


def test_fingerprint_tracks_content(frame: pd.DataFrame) -> None:
    base = data.fingerprint(frame)
    changed = frame.copy()
    changed.loc[17, "weight"] += 0.001
    assert data.fingerprint(changed) != base
    renamed = frame.rename(columns={"weight": "mass"})
    assert data.fingerprint(renamed) != base
    reindexed = frame.copy()
    reindexed.index = reindexed.index + 1000
    assert data.fingerprint(reindexed) == base  # the row index is not content


def test_regression_inferred_for_float_target() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["price"] = 100.0 + 20.0 * x[:, 0] + rng.normal(size=300)
    ds = data.prepare(frame, "price", val_fraction=0.2, test_fraction=0.2, seed=0)
    assert ds.task == "regression"
    assert ds.classes == [] and ds.n_outputs == 1
    assert ds.y_train.dtype == np.float32
    assert abs(ds.y_train.mean()) < 1e-5 and abs(ds.y_train.std() - 1.0) < 1e-3
    # Standardised with the training rows' mean and std: undoing it gives back the prices.
    y = np.concatenate([ds.y_train, ds.y_val, ds.y_test]).astype(np.float64)
    np.testing.assert_allclose(np.sort(ds.to_target_units(y)), np.sort(frame["price"]), rtol=1e-5)
    np.testing.assert_allclose(ds.to_target_units(ds.y_val), ds.y_val_units, rtol=1e-5)
    assert ds.target_std == pytest.approx(20.0, rel=0.2)


def test_integer_target_is_classification() -> None:
    frame = pd.DataFrame({"x": np.arange(90, dtype=float), "y": np.arange(90) % 3})
    ds = data.prepare(frame, "y", seed=0)
    assert ds.task == "classification" and ds.classes == [0, 1, 2] and ds.n_outputs == 3


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_load_file_through_config(frame: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    table = tmp_path / f"table{suffix}"
    if suffix == ".csv":
        frame.to_csv(table, index=False)
    else:
        frame.to_parquet(table, index=False)
    # data.path is relative to the config file, and the config runs from any directory.
    cfg = plan.load(write_config(tmp_path, table.name, val_fraction=0.2, test_fraction=0.1, seed=0))
    with pytest.warns(UserWarning, match="dropped 6 rows"):
        ds = data.load(cfg)
    assert ds.n_rows == N - MISSING_TARGET
    assert {"size", "weight", "missingindicator_size", "color_red"} <= set(ds.feature_names)
    assert np.isfinite(ds.x_train).all() and np.isfinite(ds.x_val).all()
    # The same table in memory gives the same split.
    ref = prepare(frame, seed=0)
    np.testing.assert_array_equal(ds.y_train, ref.y_train)

    # Changing one cell of the file changes the fingerprint.
    frame2 = frame.copy()
    frame2.loc[3, "weight"] = 1234.5
    if suffix == ".csv":
        frame2.to_csv(table, index=False)
    else:
        frame2.to_parquet(table, index=False)
    with pytest.warns(UserWarning):
        assert data.load(cfg).fingerprint != ds.fingerprint


@pytest.mark.parametrize("name, rows, features, classes", [
    ("digits", 1797, 64, 10),
    ("breast_cancer", 569, 30, 2),
])
def test_sklearn_sources(name: str, rows: int, features: int, classes: int) -> None:
    cfg = plan.load(CONFIG, [f"data.source=sklearn:{name}"])
    ds = data.load(cfg)
    assert ds.task == "classification"
    assert ds.n_rows == rows and ds.n_features == features and ds.n_outputs == classes
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == rows
    assert np.isfinite(ds.x_train).all()
    assert ds.fingerprint == data.load(cfg).fingerprint


# -- errors ---------------------------------------------------------------------------------------

BAD_TABLES = {
    # name -> (CSV text, target, fragments of the message)
    "missing_target_column": ("x,y\n1,0\n2,1\n3,0\n4,1\n", "label", ["data.target", "'label'", "columns: x, y"]),
    "empty_table": ("x,label\n", "label", ["bad.csv", "empty"]),
    "single_class": ("x,label\n" + "".join(f"{i},7\n" for i in range(30)), "label",
                     ["data.target", "'label'", "single class", "7"]),
    "all_targets_missing": ("x,label\n1,\n2,\n3,\n", "label", ["no rows left", "'label'"]),
    "unreadable_file": ("", "label", ["data.path", "cannot read", "bad.csv"]),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_data_errors(case: str, tmp_path: Path) -> None:
    text, target, fragments = BAD_TABLES[case]
    (tmp_path / "bad.csv").write_text(text)
    cfg = plan.load(write_config(tmp_path, "bad.csv", target=target))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(DataError) as err:
            data.load(cfg)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("case", ["missing_target_column", "empty_table", "single_class"])
def test_data_errors_through_cli(case: str, tmp_path: Path) -> None:
    text, target, fragments = BAD_TABLES[case]
    (tmp_path / "bad.csv").write_text(text)
    assert_user_error(cli("check", write_config(tmp_path, "bad.csv", target=target)), *fragments)


def test_path_without_target_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("x,y\n1,0\n")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"study": "s", "data": {"path": "t.csv"}, "search_space": None}))
    assert_user_error(cli("check", path), "data.target")


def test_source_and_path_together_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("x,y\n1,0\n")
    assert_user_error(cli("check", CONFIG, f"data.path={tmp_path / 't.csv'}", "data.target=y"),
                      "data", "exactly one of")
