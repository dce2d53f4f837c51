"""The config schema: one declaration per hyperparameter, and the rules derived from it."""

from __future__ import annotations

import itertools
import math

import pyarrow as pa
import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler

from orchestrator.config import schema
from orchestrator.config.schema import asha_rungs
from orchestrator.errors import ConfigError
from orchestrator.tune import plan
from tests.conftest import CONFIG


def test_every_hyperparameter_has_one_declaration_with_section_type_and_mutability() -> None:
    cfg = plan.load(CONFIG)
    hps = schema.hyperparameters(cfg)
    assert hps["lr"].section == "train" and hps["lr"].mutable
    assert hps["scale"].section == "data" and not hps["scale"].mutable
    assert hps["dropout"].section == "model" and hps["dropout"].mutable  # the MLP registers it so
    assert hps["hidden"].section == "model" and not hps["hidden"].mutable
    assert not {"checkpoint_every", "keep_checkpoints", "threads"} & set(hps)  # runtime-only
    assert set(schema.RUNTIME_FIELDS) == {"checkpoint_every", "keep_checkpoints", "threads"}
    types = schema.hyperparameter_types(cfg)
    assert types["config.lr"] == pa.float64() and types["config.batch_size"] == pa.int64()
    assert types["config.nesterov"] == pa.bool_() and types["config.widths"] == pa.string()
    assert set(types) == {f"config.{n}" for n in hps}


def test_base_hyperparameters_follow_the_config() -> None:
    cfg = plan.load(CONFIG, ["train.lr=0.02", "model.hidden=33", "data.scale=minmax"])
    base = schema.base_hyperparameters(cfg)
    assert (base["lr"], base["hidden"], base["scale"]) == (0.02, 33, "minmax")


@pytest.mark.parametrize("override, message", [
    ("train.lr=0", "train.lr: must be in (0, inf] (got 0.0)"),
    ("train.optimizer=adamm", "train.optimizer: unknown value (did you mean 'adam'?)"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints: must be in [1, inf]"),
    ("data.scale=zscore", "data.scale: unknown value"),
])
def test_the_declared_check_is_the_one_applied(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        plan.load(CONFIG, [override])
    assert message in str(err.value)


def test_asha_rungs_are_the_ones_ray_places() -> None:
    """The scheduler's decision epochs and the report's rung lines use this formula: it must give
    the milestones Ray Tune's ASHA computes, each as the first whole epoch at or past it (ASHA
    decides at the first report with ``epoch >= milestone``)."""
    for max_t, grace, rf in itertools.product([1, 2, 3, 5, 9, 10, 27, 30, 81, 100], [1, 2, 3, 5],
                                              [1.5, 2, 2.5, 3, 4]):
        if grace > max_t:
            continue
        ray_asha = AsyncHyperBandScheduler(time_attr="t", max_t=max_t, grace_period=grace,
                                           reduction_factor=rf, brackets=1)
        milestones = sorted({math.ceil(m - 1e-9) for b in ray_asha._brackets for m, _ in b._rungs})
        assert asha_rungs(max_t, grace, rf) == milestones, (max_t, grace, rf)
