"""Population-based training on orch's search spaces, with checkpoints that never go missing.

Ray Tune's PBT perturbs a value by multiplying it (1.2 or 0.8) whatever its scale, copies the
donor's checkpoint by reference (checkpoint retention may delete it before the copy restores: a
FileNotFoundError and a trial stuck PAUSED), and logs exploits to text files. ``OrchPBT`` changes
three things:

- **explore** on each knob's own scale (:func:`perturb`): a log-scale knob (learning rate) is
  multiplied by a factor, a ``log1m`` knob (momentum, Adam's betas) has ``1 - beta`` multiplied,
  a linear knob (dropout) moves by a fraction of its range, ints stay ints and powers of two move
  to the next power, a choice moves to a neighbour; with ``resample_probability`` a knob is drawn
  afresh. Knobs that shape the model (width, depth, activation, ...) or its data are never changed
  mid-training: they are explored only when the population starts.
- **exploit** copies the donor's checkpoint into a directory of its own (``<experiment>/pbt``)
  before the trial restores from it, so retention (``train.keep_checkpoints``) can never delete it
  in between; when the donor's recorded checkpoint is already gone, its newest one is used.
- every exploit is a row of the store's ``exploits`` table: which trial copied which, at which
  epochs, and the hyperparameters before and after; ``orch results --schedule`` and ``orch best``
  read the schedule back from it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune import Checkpoint
from ray.tune.schedulers import PopulationBasedTraining

from orchestrator.names import inside
from orchestrator.space.distributions import BY_NAME
from orchestrator.space.space import Knob, Space
from orchestrator.tune import ray_adapter

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from orchestrator.config.schema import SweepConfig

try:  # PB2's model: scikit-learn's Gaussian process and scipy's optimiser (the `pb2` extra)
    import scipy  # noqa: F401
    import sklearn  # noqa: F401
    from ray.tune.schedulers.pb2 import PB2

    _HAS_PB2, _PB2_MISSING = True, ""
except ImportError as _err:  # pragma: no cover - both ship with orch's own dependencies
    _HAS_PB2, _PB2_MISSING = False, str(_err)

log = logging.getLogger(__name__)

GENERATION_KEY = "_generation"  # how many times a trial has exploited another (its weights' branch)
EXPLOIT_DIR = "pbt"


def mutable_knobs(space: Space) -> list[str]:
    """The searched knobs PBT may change during training."""
    return [k for k in space.searched if k in space.mutable]


def perturb(knob: Knob, value: Any, factor: float, rng: np.random.Generator) -> Any:
    """``value`` moved by ``factor`` on the knob's own scale, kept inside the knob's range."""
    return knob.distribution.perturb(value, factor, rng)


class _KeepsExploits(ray_adapter.PBTHooks):
    """Exploit through a private copy of the donor's checkpoint, and record every exploit."""

    def _setup_keeping(self, space: Space, mutable: list[str], seed: int, store_root: str | None, study: str,
                       sweep_id: str, exp_dir: str | None) -> None:
        self.space, self.mutable = space, mutable
        self.rng = np.random.default_rng(seed)
        self.store_root, self.study, self.sweep_id, self.exp_dir = store_root, study, sweep_id, exp_dir
        self.exploits = 0

    def exploited(self, trial: Trial, donor: Trial, own_epoch: int | None, donor_epoch: int | None,
                  old_config: dict, new_config: dict) -> None:
        self.exploits += 1
        self._record(trial, donor, own_epoch, donor_epoch, old_config, new_config)

    def donor_checkpoint(self, trial: Trial, donor: Trial, checkpoint: Checkpoint | None) -> Checkpoint | None:
        """A copy of the donor's checkpoint that only this exploit uses (retention cannot touch it)."""
        candidates = [checkpoint, donor.checkpoint]
        source = next((c for c in candidates if c is not None and _exists(c)), None)
        if source is None or self.exp_dir is None or os.environ.get("ORCH_PBT_SHARE_CHECKPOINTS") == "1":
            return source  # (the switch is Tune's own behaviour: the negative control of the tests)
        from orchestrator.store import fs

        exp_dir = fs.as_path(self.exp_dir)
        target = inside(exp_dir, exp_dir / EXPLOIT_DIR / f"{trial.trial_id}-{self.exploits:05d}")
        if fs.is_remote(target):  # a store in object storage: copied bucket-side by pyarrow
            import pyarrow.fs as pafs

            target.rmtree()
            source_fs = source.filesystem or pafs.LocalFileSystem()
            pafs.copy_files(source.path, target.fs_path, source_filesystem=source_fs,
                            destination_filesystem=target.fs)
            return Checkpoint(path=target.fs_path, filesystem=target.fs)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source.path, target)
        return Checkpoint(path=str(target))

    def _record(self, trial: Trial, donor: Trial, own_epoch: int | None, donor_epoch: int | None, old: dict,
                new: dict) -> None:
        if not self.store_root:
            return
        from orchestrator.store.tables import Store

        changed = {k: [old.get(k), new.get(k)] for k in self.mutable if old.get(k) != new.get(k)}
        row = {
            "sweep_id": self.sweep_id, "trial_id": trial.trial_id, "generation": int(new.get(GENERATION_KEY, 0)),
            "epoch": int(own_epoch) if own_epoch is not None else None,
            "donor_trial_id": donor.trial_id,
            "donor_epoch": int(donor_epoch) if donor_epoch is not None else None,
            "old_config": json.dumps(_public(old), default=str),
            "new_config": json.dumps(_public(new), default=str),
            "changed": json.dumps(changed, default=str),
            "timestamp": datetime.now(timezone.utc),
        }
        try:
            Store(self.store_root).append("exploits", self.study, [row], self.sweep_id)
        except Exception as err:  # the store must never take the sweep down
            log.warning("pbt: could not record an exploit: %s", err)


class OrchPBT(_KeepsExploits, PopulationBasedTraining):
    """PBT that explores orch's knobs on their own scales and keeps the checkpoints it exploits."""

    def __init__(self, space: Space, *, perturbation_interval: int, quantile_fraction: float,
                 resample_probability: float, perturbation_factors: tuple[float, ...], synch: bool,
                 seed: int, store_root: str | None = None, study: str = "", sweep_id: str = "",
                 exp_dir: str | None = None, metric: str | None = None, mode: str | None = None):
        mutable = mutable_knobs(space)
        # Ray requires at least one mutation; orch's explore below replaces Ray's.
        super().__init__(
            time_attr="epoch", metric=metric, mode=mode, perturbation_interval=perturbation_interval,
            quantile_fraction=quantile_fraction, resample_probability=resample_probability,
            # Ray's annotation says two factors; it draws from as many as it is given.
            perturbation_factors=tuple(perturbation_factors),  # type: ignore[arg-type]
            hyperparam_mutations={k: _domain(space.knobs[k]) for k in mutable},
            synch=synch, require_attrs=False, log_config=False,
        )
        self._setup_keeping(space, mutable, seed, store_root, study, sweep_id, exp_dir)

    def explore(self, trial: Trial, trial_to_clone: Trial,
                ray_proposal: Callable[[], tuple[dict, dict]]) -> tuple[dict, dict]:
        donor = trial_to_clone.config
        new = dict(donor)
        operations: dict[str, str] = {}
        for name in self.mutable:
            if name not in donor:
                continue  # a conditional knob the donor does not carry
            knob = self.space.knobs[name]
            if self.rng.random() < self.resample_probability:
                new[name] = knob.distribution.resample(self.rng)
                operations[name] = "resample"
            else:
                factor = float(self.rng.choice(self.perturbation_factors))
                new[name] = perturb(knob, donor[name], factor, self.rng)
                operations[name] = f"* {factor}"
        new[GENERATION_KEY] = int(trial.config.get(GENERATION_KEY, 0)) + 1  # this trial's exploits so far
        return new, operations


if _HAS_PB2:

    class OrchPB2(_KeepsExploits, PB2):
        """PB2 with orch's checkpoint keeping and exploit records; proposals kept inside each knob."""

        def explore(self, trial: Trial, trial_to_clone: Trial,
                    ray_proposal: Callable[[], tuple[dict, dict]]) -> tuple[dict, dict]:
            proposed, operations = ray_proposal()
            # The donor's config with PB2's proposals: the weights come from the donor, so its
            # width and depth must come too.
            new = dict(trial_to_clone.config)
            for name in self.mutable:
                if name in proposed and name in new:
                    knob = self.space.knobs[name]
                    new[name] = knob.distribution.nearest(float(proposed[name]))
            new[GENERATION_KEY] = int(trial.config.get(GENERATION_KEY, 0)) + 1
            return new, operations


def pb2_scheduler(cfg: SweepConfig, space: Space, store_root: str | None, sweep_id: str, exp_dir: str | None,
                  **common: Any) -> PopulationBasedTraining:
    """PB2: a Gaussian-process bandit picks the new values of the continuous knobs, so that a
    population of 4-8 is enough. Needs scikit-learn and scipy (the ``pb2`` extra)."""
    from orchestrator.errors import ConfigError

    if not _HAS_PB2:
        raise ConfigError(f"scheduler.name: pb2 needs scikit-learn and scipy ({_PB2_MISSING}); "
                          "install them with: pip install 'orch[pb2]'")
    mutable = [k for k in mutable_knobs(space) if space.knobs[k].distribution.continuous]
    continuous = [name for name, cls in BY_NAME.items() if cls.continuous]
    kinds = f"{', '.join(continuous[:-1])} or {continuous[-1]}"
    if not mutable:
        raise ConfigError("scheduler.name: pb2 needs a continuous knob it may change during training "
                          f"(one of {', '.join(sorted(space.mutable))}; {kinds}) "
                          "in the search space")
    bounds: dict[str, dict | list | tuple] = {k: [space.knobs[k].low, space.knobs[k].high] for k in mutable}
    sched = OrchPB2(time_attr="epoch", hyperparam_bounds=bounds, require_attrs=False, log_config=False,
                    **common)
    sched._setup_keeping(space, mutable, cfg.search.seed, store_root, cfg.study, sweep_id, exp_dir)
    return sched


def _public(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _exists(checkpoint: Checkpoint) -> bool:
    fs = checkpoint.filesystem
    if fs is None:
        return os.path.exists(checkpoint.path)
    try:
        return fs.get_file_info(checkpoint.path).type.name != "NotFound"
    except Exception:
        return os.path.exists(checkpoint.path)


def _domain(knob: Knob) -> Any:
    """A Tune domain for Ray's bookkeeping (orch's explore does the sampling)."""
    return knob.distribution.tune_domain()


def cleanup(exp_dir: str | Path) -> None:
    """Remove the exploit copies of a finished sweep."""
    from orchestrator.store import fs

    fs.rmtree(fs.as_path(exp_dir) / EXPLOIT_DIR)
