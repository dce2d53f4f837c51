"""What a trials row means: its status, whether it is usable, which is better, its ``config.*``.

One home for the rules every reader of the store applies (the sweep's summary, ``orch best``, the
report, re-tuning), so that they cannot drift apart.
"""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import numpy as np
import pandas as pd

CONFIG_PREFIX = "config."


class TrialStatus(str, enum.Enum):
    """A trial's state: live ones (pending, running, paused) and the finished ones the store keeps.

    A ``str`` enum: members compare equal to the text the store holds (``"completed"``).
    """

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"  # trained every epoch it was given
    STOPPED_EARLY = "stopped_early"  # stopped by the scheduler or by its own patience
    DIVERGED = "diverged"  # its loss went non-finite or blew up: its scores are not a model's
    ERROR = "error"  # it raised (its traceback's last line is the stop reason)

    def __str__(self) -> str:
        return self.value


FINISHED = (TrialStatus.COMPLETED, TrialStatus.STOPPED_EARLY, TrialStatus.DIVERGED, TrialStatus.ERROR)
USABLE = (TrialStatus.COMPLETED, TrialStatus.STOPPED_EARLY)
STATES = tuple(TrialStatus)


def _collapsed(trials: pd.DataFrame) -> pd.Series:
    if "collapsed" not in trials.columns:
        return pd.Series(False, index=trials.index)
    return trials["collapsed"].fillna(False).astype(bool)


def usable(trials: pd.DataFrame, metric_column: str | None = None) -> pd.DataFrame:
    """The trials that can be a sweep's best: completed or stopped early, not collapsed to a
    constant output, and (given ``metric_column``) with a finite value there."""
    if not len(trials):
        return trials
    ok = trials["status"].isin([s.value for s in USABLE]) & ~_collapsed(trials)
    if metric_column is not None:
        if metric_column not in trials.columns:
            return trials.iloc[0:0]
        ok &= pd.Series(np.isfinite(pd.to_numeric(trials[metric_column], errors="coerce")),
                        index=trials.index)
    return trials[ok]


def collapsed_count(trials: pd.DataFrame) -> int:
    """How many completed or stopped-early trials collapsed to a constant output."""
    if not len(trials):
        return 0
    done = trials["status"].isin([s.value for s in USABLE])
    return int((done & _collapsed(trials)).sum())


def better(value: float | None, reference: float | None, mode: str, rel_margin: float = 0.0) -> bool:
    """Whether ``value`` beats ``reference`` under ``mode`` ("min" or "max").

    Any finite value beats no reference. With ``rel_margin`` it must beat it by that fraction of
    ``max(|reference|, 1)``: a re-run that matches the best to the last bit of float noise is not
    an improvement.
    """
    if value is None or not math.isfinite(value):
        return False
    if reference is None or not math.isfinite(reference):
        return True
    margin = rel_margin * max(abs(reference), 1.0)
    return value < reference - margin if mode == "min" else value > reference + margin


# Ties on the objective (several losses equally tiny, a validation accuracy of 1.0) are broken by
# the trial's best of a second metric, then by fewer epochs to its best, then by the smaller model:
# of equally good fits, the one most likely to generalise.
SECOND_METRIC = {"val_loss": ("val_accuracy", "max"), "val_rmse": ("val_mae", "min"), "val_r2": ("val_loss", "min"),
                 "val_mae": ("val_loss", "min")}


def tie_breakers(column: str, trials: pd.DataFrame) -> list[tuple[str, bool]]:
    """The columns (and whether ascending) that order trials tied on ``column`` (a ``best_`` one)."""
    if not column.startswith("best_"):
        return []
    metric = column[len("best_"):]
    name, mode = SECOND_METRIC.get(metric, ("val_loss", "min"))
    if name == metric or f"best_{name}" not in trials.columns:
        name, mode = ("val_loss", "min") if metric != "val_loss" else ("", "")
    keys = [(f"best_{name}", mode == "min")] if name and f"best_{name}" in trials.columns else []
    keys += [(c, True) for c in ("best_epoch", "n_params") if c in trials.columns]
    return keys


def ranked(trials: pd.DataFrame, column: str, mode: str) -> pd.DataFrame:
    """``trials`` best first by ``column``; ties broken by :func:`tie_breakers`, then the store's order."""
    keys = [(column, mode == "min"), *tie_breakers(column, trials)]
    return trials.sort_values([k for k, _ in keys], ascending=[a for _, a in keys], kind="stable",
                              na_position="last")


def best(trials: pd.DataFrame, column: str, mode: str) -> pd.Series | None:
    """The best usable trial by ``column``, or None."""
    ok = usable(trials, column)
    return ranked(ok, column, mode).iloc[0] if len(ok) else None


# -- the config.<name> columns ----------------------------------------------------------------


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def encode_value(value: Any) -> Any:
    """A hyperparameter's value as its ``config.<name>`` cell (lists and mappings as JSON)."""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def decode_value(value: Any) -> Any:
    """A ``config.<name>`` cell back as the value a trial was given (None when missing)."""
    value = value.item() if hasattr(value, "item") else value  # a NumPy scalar of any width
    if is_missing(value):
        return None
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def encode_config(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's hyperparameters as ``config.<name>`` cells."""
    return {f"{CONFIG_PREFIX}{k}": encode_value(v) for k, v in config.items()}


def decode_config(row: pd.Series | dict[str, Any], names: Any = None) -> dict[str, Any]:
    """The hyperparameters of a trials row, missing cells left out (``names``: only these, in
    their order)."""
    if names is None:
        columns = row.index if isinstance(row, pd.Series) else list(row)
        names = [str(c)[len(CONFIG_PREFIX):] for c in columns if str(c).startswith(CONFIG_PREFIX)]
    out: dict[str, Any] = {}
    for name in names:
        value = decode_value(row.get(f"{CONFIG_PREFIX}{name}"))
        if value is not None:
            out[name] = value
    return out
