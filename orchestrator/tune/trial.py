"""One trial under Ray Tune: any training function of the trial contract (orchestrator/train/context.py).

:func:`tune_trainable` is the function Ray Tune runs: it finds the device Ray gave the trial, reads
the checkpoint to resume from, calls the sweep's training function with a :class:`TrialContext`
whose reports go to Tune, and turns the function's own exceptions into an ``error`` result.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import traceback
from typing import TYPE_CHECKING, Any

import torch

from orchestrator.store.trials import TrialStatus
from orchestrator.train.context import (
    CHECKPOINT_FILE,
    ContractError,
    TrialContext,
    TrialSetup,
    TrialStopped,
    load_checkpoint,
)

if TYPE_CHECKING:
    from orchestrator.train.data import Dataset, Variants

_LOADED: dict[str, Any] = {}  # data.load_in: trial: the splits, once per worker process


def ray_device() -> tuple[torch.device, str]:
    """The device Ray gave this trial, and the GPU ids it holds ("" for none).

    A trial trains on CUDA when Ray gave it a GPU (Ray makes that GPU the only visible one), and on
    the CPU otherwise, even on a machine with GPUs. A GPU that CUDA cannot use (a CPU build of
    torch, or Ray's GPU resource declared on a machine without one) means the CPU too.
    """
    import ray

    ids = ",".join(str(i) for i in ray.get_gpu_ids())
    if ids and torch.cuda.is_available():
        return torch.device("cuda"), ids
    return torch.device("cpu"), ids


class RayBackend:
    """Results to Ray Tune (``tune.report``, with a checkpoint directory when one is due)."""

    def __init__(self, where: dict[str, Any]) -> None:
        from ray import tune

        self.where = where
        self.trial_id = tune.get_context().get_trial_id() or "trial"

    def report(self, result: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        from ray import tune

        result.update(self.where)
        if checkpoint is None:
            tune.report(result)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(checkpoint, os.path.join(d, CHECKPOINT_FILE))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))

    def checkpoint(self) -> dict[str, Any] | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return load_checkpoint(os.path.join(d, CHECKPOINT_FILE))


def trial_name(trial: Any) -> str:
    """A trial's name and directory name: its id (Tune's ``trial_name_creator``). A function of
    this module, not a lambda: Tune pickles it into every trial's saved state, by reference."""
    return str(trial.trial_id)


def tune_trainable(config: dict[str, Any], data: Dataset | Variants | None = None,
                   setup: TrialSetup | None = None, data_config: Any = None) -> None:
    """Ray Tune function trainable: ``tune.with_parameters(tune_trainable, data=..., setup=...)``.

    ``data`` is None when each trial loads its own (``data.load_in: trial``): ``data_config`` is
    the sweep's config then, and the data factory is called once per worker process.

    An exception raised by the training function, a broken contract or a checkpoint refused by
    :func:`load_checkpoint` ends the trial as ``error`` with its message (a retry would fail the
    same way); only a lost worker or node makes Tune retry it (``failure.max_retries``), from its
    last checkpoint.
    """
    import ray
    from ray import tune

    from orchestrator.config.imports import project_on_path
    from orchestrator.train.trainer import trainable

    assert setup is not None  # tune.with_parameters passes it
    project_on_path(setup.project)  # before anything imports the user's code (a model factory too)
    torch.set_num_threads(setup.threads)
    dev, gpu_ids = ray_device()
    where = {"node_id": ray.get_runtime_context().get_node_id(), "device": str(dev), "gpu_ids": gpu_ids}
    ctx: TrialContext | None = None
    try:
        backend = RayBackend(where)
        ctx = TrialContext(config, setup, data, backend, dev,
                           load_data=(lambda: _load_in_trial(data_config)) if data is None else None)
        fn = trainable(setup)
        with contextlib.suppress(TrialStopped):  # it reported after its last epoch: that report was dropped
            fn(ctx.config, ctx)
        ctx.finish()
    except Exception as err:
        if ctx is not None and ctx.reporting:
            raise  # Tune's own (a stop, a lost driver): not the training's
        traceback.print_exc()
        worst = float("inf") if setup.mode == "min" else float("-inf")
        kind = "" if isinstance(err, ContractError) else f"{type(err).__name__}: "
        message = " ".join(f"{kind}{err}".split())[:500]
        tune.report({setup.metric: worst, "history": [], "best": {}, "final": True,
                     "trial_status": TrialStatus.ERROR.value, "stop_reason": message, "collapsed": False, **where})


def _load_in_trial(cfg: Any) -> Dataset:
    """``data.load_in: trial``: call the data factory here, once per worker process."""
    from orchestrator.train import data as data_mod

    key = f"{cfg.data.factory}|{cfg.data.args}|{cfg.data.seed}"
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = data_mod.from_factory(cfg)
    return _LOADED[key]
