"""orch from Python: run a sweep and read its results, as the ``orch`` command line does.

::

    import orchestrator as orch

    result = orch.sweep("conf/tabular.yaml", ["search.num_samples=8"])
    result.best_config                          # {"lr": 0.0012, "hidden": 212, ...}
    orch.results(study="tabular-digits")        # every trial of the study, a pandas DataFrame
    orch.best("tabular-digits")                 # what `orch best tabular-digits` prints, as a dict

Each function calls what its command calls (``orch sweep``, ``orch best``), so a config, a store and
an error are the same either way: bad input raises :class:`~orchestrator.errors.UserError` (or a
subclass, such as :class:`~orchestrator.errors.ConfigError`) with the one-line message the command
prints. Importing this module imports neither torch, Ray nor pandas.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UserError
from orchestrator.store.fs import AnyPath

if TYPE_CHECKING:
    import pandas as pd

    from orchestrator.config.schema import SweepConfig
    from orchestrator.store.tables import Store
    from orchestrator.tune.driver import SweepResult

StorePath = str | os.PathLike[str]


@dataclass
class Sweep:
    """What :func:`sweep` returns: the sweep's best and its trials, as the store holds them."""

    study: str
    sweep_id: str
    store: Path  # the results store's directory
    finished: bool  # False when Ctrl-C (or SIGTERM) stopped it: sweep(..., resume=sweep_id) continues it
    metric: str  # the objective (objective.metric)
    best_value: float | None  # the best trial's best value of the metric
    best_config: dict[str, Any]  # the best trial's hyperparameters
    best_trial: pd.Series | None  # the best trial's row of ``trials``
    trials: pd.DataFrame  # one row per trial of this sweep (orch.results(store, study, sweep_id))
    report: AnyPath | None = None  # the report's page, with sweep(..., report=True)
    details: SweepResult | None = field(default=None, repr=False)  # everything the driver returned

    def __repr__(self) -> str:
        best = f"{self.metric}={self.best_value:.6g}" if self.best_value is not None else "no best trial"
        state = "" if self.finished else ", interrupted"
        return f"<Sweep {self.sweep_id} of {self.study}: {len(self.trials)} trials, {best}{state}>"


def sweep(config: str | os.PathLike[str] | Mapping[str, Any] | SweepConfig, overrides: Sequence[str] = (),
          store: StorePath | None = None, address: str | None = None, verbose: bool = False,
          report: bool = False, resume: str | None = None) -> Sweep:
    """Run a sweep, as ``orch sweep CONFIG [OVERRIDES] [--store] [--address] [--resume]`` does.

    Args:
        config: a YAML config file; or its contents as a mapping (the same structure; relative paths
            in it resolve from the working directory); or a config object
            (:class:`~orchestrator.config.schema.SweepConfig`).
        overrides: ``key=value`` overrides (``["search.num_samples=8"]``), applied last.
        store: the results store's directory (default: the config's ``store.path``, else
            ``$ORCH_STORE``, else ``results/``).
        address: the Ray cluster to run on (``HOST:PORT``, ``auto``, or ``local``: a Ray of this
            process's own); default: ``ray.address``, else the warm local Ray of ``orch up`` if one
            runs, else a Ray of this process's own.
        verbose: show Ray's own logs and warnings.
        report: also write the sweep's report (``orch report``); ``Sweep.report`` is its page.
        resume: continue an interrupted sweep of the study: its id, or "latest".

    Returns:
        The sweep: its best config and trial, and its trials as the store holds them. Progress and
        the summary are printed as ``orch sweep`` prints them.

    Raises:
        UserError: a bad config (:class:`~orchestrator.errors.ConfigError`), bad data, nothing to resume.
        SweepFailed: no trial produced a usable result.
    """
    from orchestrator.store.tables import Store, store_root

    cfg = _load(config, overrides)  # before importing torch and Ray: errors come at once
    from orchestrator.tune import driver

    result = driver.run(cfg, store=Store(store_root(cfg, _text(store))), address=address, resume=resume,
                        verbose=verbose, report=report, summary=driver.print_summary)
    if not result.finished:
        driver.print_summary(result)
    driver.announce_report(result)
    trials = result.store.trials(result.study, sweep_id=result.sweep_id)
    best = trials[trials["trial_id"] == result.best_trial_id] if result.best_trial_id and len(trials) else None
    return Sweep(study=result.study, sweep_id=result.sweep_id, store=result.store.root, finished=result.finished,
                 metric=result.metric, best_value=result.best_value, best_config=dict(result.best_config),
                 best_trial=best.iloc[0] if best is not None and len(best) else None, trials=trials,
                 report=result.report, details=result)


def results(store: StorePath | Store | None = None, study: str | None = None,
            sweep: str | None = None) -> pd.DataFrame:
    """The trials of the store: one row per trial (``config.<knob>``, ``best_``/``final_`` metrics,
    ``test_`` scores, status, ...), of every study, or of ``study``, or of one ``sweep``.

    Args:
        store: the results store's directory (default: ``$ORCH_STORE``, else ``results/``).
        study: only this study's trials.
        sweep: only this sweep's trials (its id).

    Raises:
        UserError: no store there, no such study or sweep.
    """
    s = _store(store)
    if not s.root.is_dir():
        raise UserError(f"store: no results store at {s.root}")
    if study is not None and not s.files("trials", study):
        known = [p.name.split("=", 1)[1] for p in s.partitions("trials")]
        raise UserError(f"study: no trials of study {study!r} in {s.root}; studies: {', '.join(known) or '(none)'}")
    trials = s.trials(study, sweep_id=sweep)
    if sweep is not None and trials.empty:
        where = f"study {study!r}" if study is not None else str(s.root)
        raise UserError(f"sweep: no trials of sweep {sweep!r} in {where}")
    return trials


def best(study: str, store: StorePath | Store | None = None, sweep: str | None = None) -> dict[str, Any]:
    """The best config of ``study`` (or of one of its sweeps): what ``orch best STUDY`` prints, as a
    mapping of config sections (``model``, ``train``, ``data``; ``schedule`` for population-based
    training), ready to merge into a config.

    Raises:
        UserError: no such study or sweep, or no usable trial.
    """
    import yaml

    from orchestrator.store import queries

    return yaml.safe_load(queries.best_yaml(_store(store).root, study, sweep))


# -- helpers ------------------------------------------------------------------------------------------


def _load(config: Any, overrides: Sequence[str]) -> SweepConfig:
    """The config, checked whole, as ``orch sweep`` checks it (:func:`orchestrator.tune.plan.load`)."""
    from orchestrator.config import load as config_mod
    from orchestrator.config.schema import SweepConfig
    from orchestrator.space import space as spaces
    from orchestrator.tune import plan

    if isinstance(overrides, str):
        raise UserError(f"overrides: a list of key=value strings, not one string (got {overrides!r})")
    if isinstance(config, (str, os.PathLike)):
        return plan.load(Path(config), tuple(overrides))
    if not isinstance(config, (Mapping, SweepConfig)):
        raise UserError(f"config: a path, a mapping or a SweepConfig (got {type(config).__name__})")
    cfg = config_mod.load(config, tuple(overrides))
    spaces.check_search(cfg)  # what plan.load checks after loading
    return cfg


def _text(store: StorePath | None) -> str | None:
    return None if store is None else os.fspath(store)


def _store(store: StorePath | Store | None) -> Store:
    """The store of ``store``, as the commands' ``--store``: else $ORCH_STORE, else results/."""
    from orchestrator.store.tables import Store, store_root

    return store if isinstance(store, Store) else Store(store_root(None, _text(store)))


__all__ = ["Sweep", "sweep", "results", "best"]


def load_model(path: str | Path, *, trust_code: bool = False, device: str = "cpu") -> Any:
    """A model artefact (``orch export``'s output, ``<store>/best/<study>``, or a kept trial's
    ``<store>/models/<study>/<sweep_id>/<trial_id>``), ready to ``predict(frame)``.

    A model built by your own factory (named by import path) is imported only when this machine's
    key signed the artefact (orch wrote it here), or with ``trust_code=True``.
    """
    from orchestrator.tune.artefacts import load_model as load

    return load(path, trust_code=trust_code, device=device)
