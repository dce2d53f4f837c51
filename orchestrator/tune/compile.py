"""Compile a checked config once into everything a sweep runs with.

:func:`compile_sweep` turns a config and its loaded data into a :class:`SweepPlan`: the search plan
(space, points, number of trials), the scheduler plan, the per-trial setup, the data each trial
gets (one prepared copy per scaling the space can choose) and the store's column types. The
driver, re-tuning's drift check and the benchmarks all start from it, so no rule is applied twice
in two shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from orchestrator.config import models, schema
from orchestrator.config.schema import SweepConfig
from orchestrator.space import space as spaces
from orchestrator.store import fs
from orchestrator.train import data as data_mod
from orchestrator.train.context import BUILT_IN, TrialSetup
from orchestrator.train.losses import check_task
from orchestrator.train.metrics import DIAGNOSTICS, METRIC_DIRECTIONS
from orchestrator.tune import schedulers
from orchestrator.tune.files import WEIGHTS_DIR
from orchestrator.tune.plan import check_model


@dataclass
class SweepPlan:
    """A sweep, compiled: what the driver hands to Ray Tune."""

    cfg: SweepConfig
    search: spaces.SearchPlan
    scheduler: schedulers.SchedulerPlan
    setup: TrialSetup
    data: Any  # a Dataset, Variants (one per scaling the space can choose), or None (data.load_in: trial)
    columns: dict[str, pa.DataType]  # store column -> type, stable across sweeps of the study

    @property
    def space(self) -> spaces.Space:
        return self.search.space

    @property
    def n_trials(self) -> int:
        return self.search.n_trials


def compile_sweep(cfg: SweepConfig, dataset: data_mod.Dataset, store_root: str | None = None,
                  sweep_id: str = "", exp_dir: str | None = None) -> SweepPlan:
    """Compile ``cfg`` against its loaded data.

    ``store_root``, ``sweep_id`` and ``exp_dir`` tell a population-based scheduler where to record
    its exploits and keep the checkpoints it copies.

    Raises:
        ConfigError: the space, points or scheduler do not fit the config.
        UserError: the objective is not a metric the data's task reports.
    """
    search = spaces.check_search(cfg)
    check_task(cfg, dataset, search.space)
    check_model(cfg, dataset)
    scheduler = schedulers.create(cfg, search.space, store_root, sweep_id, exp_dir)
    population = cfg.scheduler.name in schedulers.POPULATION
    # PBT copies weights at its perturbation steps: every trial checkpoints at each of them.
    every = cfg.scheduler.perturbation_interval if population else cfg.train.checkpoint_every
    setup = TrialSetup(
        base=schema.base_hyperparameters(cfg),
        model=models.model_id(cfg.model),
        trainable=cfg.trainable or BUILT_IN,
        num_workers=cfg.data.num_workers,
        project=cfg.project,
        needs_state=population,
        weights_dir=str(fs.as_path(exp_dir) / WEIGHTS_DIR) if exp_dir and cfg.store.keep_models > 0 else None,
        metric=cfg.objective.metric,
        mode=cfg.objective.mode,
        max_epochs=cfg.scheduler.max_epochs,
        report_epochs=schedulers.report_epochs(scheduler, cfg.scheduler.max_epochs, every),
        checkpoint_every=every,
        threads=cfg.train.threads or max(1, int(cfg.resources.cpu_per_trial)),
    )
    data = None if cfg.data.load_in == "trial" else data_variants(cfg, dataset, search.space)
    return SweepPlan(cfg, search, scheduler, setup, data, column_types(cfg))


def data_variants(cfg: SweepConfig, dataset: data_mod.Dataset, space: spaces.Space) -> Any:
    """``dataset``, or one prepared copy per feature/target scaling the space can choose."""
    def values(name: str, current: str) -> list[str]:
        knob = space.knobs.get(name)
        return list(dict.fromkeys(knob.values)) if knob is not None and knob.values else [current]

    if dataset.sets is not None or cfg.data.factory:
        return dataset  # a factory's data: no scalings to choose between
    scales = values("scale", dataset.scale)
    targets = (values("target_scale", dataset.target_scale) if dataset.task == "regression"
               else [dataset.target_scale])
    if scales == [dataset.scale] and targets == [dataset.target_scale]:
        return dataset
    return data_mod.load_variants(cfg, scales, targets, first=dataset)


def column_types(cfg: SweepConfig) -> dict[str, pa.DataType]:
    """The trials table's typed columns: every hyperparameter, metric and test score."""
    types = schema.hyperparameter_types(cfg)
    for name in METRIC_DIRECTIONS:
        types[name] = types[f"final_{name}"] = types[f"best_{name}"] = pa.float64()
        if name.startswith("val_"):
            types[f"test_{name[4:]}"] = pa.float64()
    for name in {n for names in DIAGNOSTICS.values() for n in names}:
        types[f"test_{name[4:]}"] = pa.float64()
    types["collapsed"] = pa.bool_()
    return types


def code_version(cfg: SweepConfig) -> str:
    """A hash of the code a trial runs: the trainer's modules, the model's, and the modules of the
    training function and the data factory a config names."""
    import hashlib
    import inspect

    from orchestrator.config import models
    from orchestrator.config.imports import import_callable
    from orchestrator.train import context, losses, optim, trainer

    modules = [trainer, context, losses, optim, data_mod, inspect.getmodule(models.get(models.model_id(cfg.model)))]
    for spec, key in ((cfg.trainable, "trainable"), (cfg.data.factory, "data.factory")):
        if spec:
            modules.append(inspect.getmodule(import_callable(spec, key)))
    h = hashlib.sha256()
    for module in dict.fromkeys(m for m in modules if m is not None):
        try:
            h.update(inspect.getsource(module).encode())
        except (OSError, TypeError):
            h.update(module.__name__.encode())  # no source to read (a compiled module)
    return h.hexdigest()[:12]
