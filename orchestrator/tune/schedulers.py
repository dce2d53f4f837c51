"""Trial schedulers: a name -> factory table over Ray Tune's schedulers.

A factory takes the sweep config and returns a :class:`SchedulerPlan`: the Ray Tune scheduler and
the epochs at which it needs a result. Trials report to Tune only at those epochs (plus checkpoints
and the last epoch); every epoch's metrics still reach the store, batched into those reports. Fewer
round trips through the Tune driver is most of what makes short trials cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    TrialScheduler,
)

from orchestrator.config.schema import asha_rungs, grace_period_of

if TYPE_CHECKING:
    from orchestrator.config.schema import SweepConfig
    from orchestrator.space.space import Space

TIME_ATTR = "epoch"


@dataclass
class SchedulerPlan:
    scheduler: TrialScheduler
    # Epochs at which the scheduler decides; None means it wants every epoch.
    decision_epochs: frozenset[int] | None


class BestSoFarASHA(AsyncHyperBandScheduler):
    """Ray Tune's ASHA, deciding at each rung on the trial's best objective so far.

    Ray's scheduler compares the value a trial reports at the rung, which is that one epoch's
    validation score: a trial whose epoch at the rung happens to be a noisy bad one is stopped,
    although its best epoch (the one whose weights orch keeps, and by which it ranks trials) is
    among the leaders. Each result a trial sends carries its best per metric so far (``best``, over
    every epoch, reported or not, and restored with the trial after a resume); the rung records
    that instead. Only what the scheduler compares changes: the result Tune records, and the store
    gets, is the trial's own. A trial whose objective is not finite (diverged) stays the worst.

    Picklable like Ray's (``tuner.pkl`` holds it): keep this class's name and module.
    """

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        return super().on_trial_result(tune_controller, trial, self._rung_result(result))

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        super().on_trial_complete(tune_controller, trial, self._rung_result(result))

    def _rung_result(self, result: dict[str, Any]) -> dict[str, Any]:
        return best_so_far(result, self._metric, self._metric_op)


def best_so_far(result: dict[str, Any], metric: str | None, sign: float | None) -> dict[str, Any]:
    """``result`` with ``metric`` replaced by the trial's best so far (``result["best/<metric>"]``,
    as Tune flattens it for schedulers, or ``result["best"][metric]``) when that is better;
    ``sign`` is +1 where larger is better, -1 where smaller is (Ray's ``_metric_op``).

    The result itself is never changed (Tune records it): a copy is returned.
    """
    if not metric or not sign:
        return result
    # Tune hands schedulers the result flattened ("best/val_loss"); nested where it is not.
    best = result.get(f"best/{metric}", (result.get("best") or {}).get(metric))
    value = result.get(metric)
    if not isinstance(value, (int, float)) or not isinstance(best, (int, float)):
        return result
    if not math.isfinite(value) or not math.isfinite(best) or sign * best <= sign * value:
        return result
    return {**result, metric: float(best)}


def _asha(cfg: SweepConfig) -> SchedulerPlan:
    s = cfg.scheduler
    sched = BestSoFarASHA(
        time_attr=TIME_ATTR,
        max_t=s.max_epochs,
        grace_period=grace_period_of(s),
        reduction_factor=s.reduction_factor,
        brackets=1,
    )
    # Trials report only at the rungs (and their last epoch): ASHA decides nowhere else.
    return SchedulerPlan(sched, frozenset(asha_rungs(s.max_epochs, grace_period_of(s), s.reduction_factor)))


def _pbt_common(cfg: SweepConfig, space: Space, store_root: str | None, sweep_id: str,
                exp_dir: str | None) -> dict[str, Any]:
    s = cfg.scheduler
    # metric and mode come from the Tuner's TuneConfig
    return dict(perturbation_interval=s.perturbation_interval, quantile_fraction=s.quantile_fraction, synch=s.synch)


def pbt_epochs(cfg: SweepConfig) -> frozenset[int]:
    """PBT decides (and every trial checkpoints) at each multiple of the perturbation interval."""
    s = cfg.scheduler
    return frozenset(range(s.perturbation_interval, s.max_epochs + 1, s.perturbation_interval))


def _pbt(cfg: SweepConfig, space: Space, store_root: str | None = None, sweep_id: str = "",
         exp_dir: str | None = None) -> SchedulerPlan:
    from orchestrator.tune.pbt import OrchPBT

    s = cfg.scheduler
    sched = OrchPBT(space, resample_probability=s.resample_probability,
                    perturbation_factors=tuple(s.perturbation_factors), seed=cfg.search.seed,
                    store_root=store_root, study=cfg.study, sweep_id=sweep_id, exp_dir=exp_dir,
                    **_pbt_common(cfg, space, store_root, sweep_id, exp_dir))
    return SchedulerPlan(sched, pbt_epochs(cfg))


def _pb2(cfg: SweepConfig, space: Space, store_root: str | None = None, sweep_id: str = "",
         exp_dir: str | None = None) -> SchedulerPlan:
    from orchestrator.tune.pbt import pb2_scheduler

    return SchedulerPlan(pb2_scheduler(cfg, space, store_root, sweep_id, exp_dir,
                                       **_pbt_common(cfg, space, store_root, sweep_id, exp_dir)),
                         pbt_epochs(cfg))


def _fifo(cfg: SweepConfig) -> SchedulerPlan:
    return SchedulerPlan(FIFOScheduler(), frozenset())


def _hyperband(cfg: SweepConfig) -> SchedulerPlan:
    s = cfg.scheduler
    sched = HyperBandScheduler(time_attr=TIME_ATTR, max_t=s.max_epochs, reduction_factor=s.reduction_factor)
    return SchedulerPlan(sched, None)


def _median(cfg: SweepConfig) -> SchedulerPlan:
    s = cfg.scheduler
    sched = MedianStoppingRule(
        time_attr=TIME_ATTR, grace_period=grace_period_of(s), min_samples_required=s.min_samples
    )
    return SchedulerPlan(sched, None)


SCHEDULERS: dict[str, Callable[..., SchedulerPlan]] = {
    "asha": _asha,
    "fifo": _fifo,
    "hyperband": _hyperband,
    "median": _median,
    "pbt": _pbt,
    "pb2": _pb2,
}
POPULATION = ("pbt", "pb2")  # schedulers that change hyperparameters during training


def names() -> list[str]:
    return list(SCHEDULERS)


def create(cfg: SweepConfig, space: Space | None = None, store_root: str | None = None, sweep_id: str = "",
           exp_dir: str | None = None) -> SchedulerPlan:
    """The scheduler plan for ``cfg.scheduler.name`` (validated by the config loader).

    Population-based schedulers need the search space (what they may mutate) and where to record
    their exploits.
    """
    if cfg.scheduler.name in POPULATION:
        return SCHEDULERS[cfg.scheduler.name](cfg, space, store_root, sweep_id, exp_dir)
    return SCHEDULERS[cfg.scheduler.name](cfg)


def report_epochs(plan: SchedulerPlan, max_epochs: int, checkpoint_every: int) -> frozenset[int] | None:
    """Epochs at which a trial reports to Tune: decisions, checkpoints and the last epoch."""
    if plan.decision_epochs is None:
        return None
    checkpoints = range(checkpoint_every, max_epochs + 1, checkpoint_every)
    return frozenset({*plan.decision_epochs, *checkpoints, max_epochs})
