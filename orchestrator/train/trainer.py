"""The training loop of one trial.

``run_trial`` is a flat function: seed, build, then per epoch train, validate, record, and report
when the sweep needs a result. It knows nothing of Ray; ``tune_trainable`` adapts it to Ray Tune
(reporting, checkpoints, resume), and the benchmark runs the same function in a bare process pool.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from orchestrator.store.trials import TrialStatus
from orchestrator.train import data as data_mod
from orchestrator.train.losses import TaskLoss, evaluate
from orchestrator.train.metrics import METRIC_DIRECTIONS, TASK_METRICS
from orchestrator.train.optim import (
    LRSchedule,
    apply_hyperparameters,
    batch_size_at,
    build_optimizer,
    clip_gradients,
)

if TYPE_CHECKING:
    from orchestrator.train.data import Dataset, Variants

CHECKPOINT_FILE = "trial.pt"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (sent once with the trainable, not per trial)."""

    base: dict[str, Any]  # hyperparameters before the sampled ones are applied
    model: str
    metric: str
    mode: str
    max_epochs: int
    report_epochs: frozenset[int] | None  # None: report every epoch
    checkpoint_every: int
    threads: int = 1


Reporter = Callable[[dict[str, Any], dict[str, Any] | None], None]


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed python, numpy and torch; return the generator that orders the batches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    if deterministic or torch.are_deterministic_algorithms_enabled():  # the call costs seconds the first time
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    # Subnormal floats (Adam's moments decaying towards zero on dead units) make CPU arithmetic
    # tens of times slower; zero is as good a value for them.
    torch.set_flush_denormal(True)
    return torch.Generator().manual_seed(seed)


def device() -> torch.device:
    """CUDA when this process can see a GPU (Ray hides GPUs from trials it gave none), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Parts:
    """Everything a trial builds from its hyperparameters."""

    hp: dict[str, Any]
    data: Dataset  # the Dataset this trial trains on
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    loss: TaskLoss


def hyperparameters(config: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """A trial's hyperparameters: the sweep's base, then the sampled values (``_``-keys are orch's)."""
    return {**base, **{k: v for k, v in config.items() if not k.startswith("_")}}


def build(hp: dict[str, Any], data: Dataset | Variants, model_name: str, max_epochs: int, direction: int = -1,
          dev: torch.device | None = None) -> Parts:
    """Model, optimiser, schedule and loss for ``hp`` (``data`` may hold several scalings)."""
    from orchestrator.config import models

    data = data_mod.select(data, hp)
    loss = TaskLoss(hp, data)
    model_hp = {k: hp[k] for k in models.hyperparameters(model_name) if k in hp}
    model = models.build(model_name, data.n_features, loss.n_outputs, **model_hp).to(dev or torch.device("cpu"))
    if loss.weights is not None:
        loss.weights = loss.weights.to(dev or torch.device("cpu"))
    optimizer = build_optimizer(model.parameters(), hp)
    return Parts(hp, data, model, optimizer, LRSchedule(hp, max_epochs, direction), loss)


def is_better(value: float, best: float | None, direction: int, min_delta: float = 0.0) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value - best) * direction > min_delta


def _tensor(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.array(a)).to(dev)


def run_trial(config: dict[str, Any], data: Dataset | Variants, setup: TrialSetup, report: Reporter,
              state: dict[str, Any] | None = None, dev: torch.device | None = None) -> dict[str, Any]:
    """Train one configuration; return the final report.

    ``report(metrics, checkpoint_state)`` is called at the epochs the sweep asked for and at the
    end; ``metrics["history"]`` holds every epoch since the previous report. ``state`` is a
    checkpoint to resume from (its hyperparameters are replaced by ``config``'s). ``dev``: where
    to train (default: CUDA when this process sees a GPU).
    """
    hp = hyperparameters(config, setup.base)
    generation = int(config.get("_generation", 0))  # exploits (population-based training) so far
    torch.set_num_threads(setup.threads)
    gen = seed_everything(int(hp["seed"]), bool(hp.get("deterministic")))
    dev = dev or device()
    direction = METRIC_DIRECTIONS.get(setup.metric, -1 if setup.mode == "min" else +1)
    parts = build(hp, data, setup.model, setup.max_epochs, direction, dev)
    data, model, optimizer, schedule, loss_fn = parts.data, parts.model, parts.optimizer, parts.schedule, parts.loss

    # Data: tensors once per trial, straight from the shared arrays.
    x_train, y_train = _tensor(data.x_train, dev), _tensor(data.y_train, dev)
    x_val, y_val = _tensor(data.x_val, dev), _tensor(data.y_val, dev)
    x_test, y_test = _tensor(data.x_test, dev), _tensor(data.y_test, dev)
    n_train = len(x_train)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    factor = hp.get("divergence_factor")

    # Resume.
    start_epoch, best, best_epoch, since_best, first_loss = 1, {}, 0, 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        apply_hyperparameters(optimizer, hp)  # the checkpoint's own values were restored with it
        schedule.load_state_dict(state["schedule"])
        start_epoch = state["epoch"] + 1
        best, best_epoch, since_best = state["best"], state["best_epoch"], state["since_best"]
        first_loss = state.get("first_loss")
        set_rng_state(state["rng"], gen)

    resumed: dict[str, float] = {}
    if state is not None and len(x_val):
        # The restored weights' own score, before any training: after an exploit (population-based
        # training) it is the donor's, which shows that the weights came across.
        scores = evaluate(model, x_val, y_val, data, loss_fn, "val", data.y_val_units)
        resumed = {"resumed_val_loss": scores["val_loss"]}

    history: list[dict[str, Any]] = []
    status, reason = TrialStatus.COMPLETED.value, ""
    metrics: dict[str, Any] = {}
    started = time.perf_counter()
    for epoch in range(start_epoch, setup.max_epochs + 1):
        t0 = time.perf_counter()
        # Train one epoch over (reshuffled) mini-batches.
        model.train()
        batch_size = batch_size_at(hp, epoch)
        order = (torch.randperm(n_train, generator=gen).to(dev) if hp.get("shuffle", True)
                 else torch.arange(n_train, device=dev))
        steps = max(1, math.ceil(n_train / batch_size))
        total, seen, lr = 0.0, 0, schedule.lr_at(epoch - 1)
        for step, i in enumerate(range(0, n_train, batch_size)):
            idx = order[i:i + batch_size]
            if len(idx) < 2 and n_train >= 2 and has_bn:
                continue  # batch norm cannot train on a single row
            lr = schedule.set(optimizer, epoch - 1 + step / steps)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            value = loss.item()
            if not math.isfinite(value):
                total, seen = value, 1
                break
            if first_loss is None:
                first_loss = value
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model.parameters(), hp)
            optimizer.step()
            total += value * len(idx)
            seen += len(idx)
        train_loss = total / max(seen, 1)

        # Validate and record.
        if math.isfinite(train_loss):
            metrics = {"train_loss": train_loss,
                       **evaluate(model, x_val, y_val, data, loss_fn, "val", data.y_val_units)}
        else:
            metrics = {"train_loss": train_loss, **{m: float("nan") for m in TASK_METRICS[data.task][1:]}}
        metrics.update(lr=lr, batch_size=batch_size, generation=generation, **resumed)
        resumed = {}
        metrics["epoch_time_s"] = time.perf_counter() - t0
        metrics["epoch"] = epoch
        metrics["timestamp"] = time.time()  # wall clock: when this epoch's numbers were known
        history.append(metrics)
        for name, value in metrics.items():
            d = METRIC_DIRECTIONS.get(name)
            if d is not None and is_better(value, best.get(name), d):
                best[name] = value
        objective = metrics.get(setup.metric, float("nan"))
        if is_better(objective, best.get("_objective"), direction, hp.get("min_delta", 0.0)):
            best["_objective"], best_epoch, since_best = objective, epoch, 0
        else:
            since_best += 1
        schedule.epoch_end(objective)

        # Decide whether this trial goes on.
        if not all(math.isfinite(v) for k, v in metrics.items() if k in METRIC_DIRECTIONS):
            status = TrialStatus.DIVERGED.value
            reason = f"non-finite loss at epoch {epoch} (lr {lr:.3g}): lower the learning rate"
        elif factor and first_loss is not None and first_loss > 0 and train_loss > factor * first_loss:
            status = TrialStatus.DIVERGED.value
            reason = (f"training loss {train_loss:.4g} at epoch {epoch} is over {factor:g}x its "
                      f"first value {first_loss:.4g} (lr {lr:.3g}): lower the learning rate")
        elif hp.get("patience") and since_best >= int(hp["patience"]):
            status = TrialStatus.STOPPED_EARLY.value
            reason = f"no improvement of {setup.metric} for {since_best} epochs"
        last = epoch == setup.max_epochs or status != TrialStatus.COMPLETED

        # Report when the scheduler decides, at checkpoints, and at the end.
        if last or setup.report_epochs is None or epoch in setup.report_epochs:
            result = _result(metrics, history, best, best_epoch, setup, last, status, reason,
                             time.perf_counter() - started)
            if status != TrialStatus.DIVERGED and len(x_test):
                # The held-out test split, at reports only (a trial may be stopped after any of
                # them): the store keeps the last, for the model the trial ended with. Reported,
                # never used to choose.
                result["test"] = evaluate(model, x_test, y_test, data, loss_fn, "test", data.y_test_units)
            checkpoint = None
            if not last and (epoch % setup.checkpoint_every == 0 or setup.report_epochs is None):
                # Tensors and plain values only: it is loaded with torch.load(weights_only=True).
                checkpoint = {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "rng": rng_state(gen),
                    **plain({"schedule": schedule.state_dict(), "first_loss": first_loss,
                             "best": best, "best_epoch": best_epoch, "since_best": since_best,
                             "hp": hp}),
                }
            report(result, checkpoint)
            history = []
        if last:
            return result
    return _result(metrics, history, best, best_epoch, setup, True, status, reason, 0.0)


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """Every random state a trial draws from, as tensors and plain values."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(), "gen": gen.get_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "python": [int(version), [int(k) for k in internal], gauss_next],
    }


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    gen.set_state(state["gen"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def plain(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, arrays as tensors, and containers rebuilt
    from plain values: what ``torch.load(weights_only=True)`` reads back.

    Raises:
        TypeError: ``value`` holds something else (an object ``weights_only`` would refuse).
    """
    if isinstance(value, torch.Tensor) or value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):  # (an OrderedDict, such as a state_dict, stays one)
        return type(value)((plain(k), plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    for kind in (bool, int, float, str):  # a subclass (an IntEnum): its plain value
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"a checkpoint holds only tensors and plain values, not {type(value).__name__}")


def load_checkpoint(path: str) -> dict[str, Any]:
    """A trial checkpoint written by :func:`tune_trainable`: tensors and plain values only.

    Read with ``weights_only=True``: a file that holds anything else (a pickled object, which
    could run code when loaded) is refused.

    Raises:
        CheckpointError: the file is not such a checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise CheckpointError(f"refusing to load checkpoint {path}: not a checkpoint of tensors "
                              f"and plain values ({first[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"refusing to load checkpoint {path}: not a checkpoint of this "
                              "trainer")
    return state


class CheckpointError(Exception):
    """A trial checkpoint that cannot (or must not) be loaded."""


def _result(metrics: dict[str, Any], history: list[dict[str, Any]], best: dict[str, Any], best_epoch: int,
            setup: TrialSetup, last: bool, status: str, reason: str, elapsed: float) -> dict[str, Any]:
    result = dict(metrics)
    result["collapsed"] = bool(metrics.get("val_collapsed"))
    # Schedulers need a number: a diverged trial is the worst possible result (not NaN, and not
    # the huge but finite loss it stopped at).
    objective = result.get(setup.metric, float("nan"))
    if status == TrialStatus.DIVERGED or not (isinstance(objective, float) and math.isfinite(objective)):
        result[setup.metric] = float("inf") if setup.mode == "min" else float("-inf")
    result.update(
        history=history,
        best={k: v for k, v in best.items() if not k.startswith("_")},
        best_epoch=best_epoch,
        final=last,
        trial_status=status if last else TrialStatus.RUNNING.value,
        stop_reason=reason,
        train_time_s=elapsed,
    )
    return result


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


def tune_trainable(config: dict[str, Any], data: Dataset | Variants | None = None,
                   setup: TrialSetup | None = None) -> None:
    """Ray Tune function trainable: ``tune.with_parameters(tune_trainable, data=..., setup=...)``.

    An exception raised by the training, or a checkpoint refused by :func:`load_checkpoint`, ends
    the trial as ``error`` with its message (a retry would fail the same way); only a lost worker
    or node makes Tune retry it (``failure.max_retries``), from its last checkpoint.
    """
    import traceback

    import ray
    from ray import tune

    assert data is not None and setup is not None  # tune.with_parameters passes both
    dev, gpu_ids = ray_device()
    where = {"node_id": ray.get_runtime_context().get_node_id(), "device": str(dev), "gpu_ids": gpu_ids}
    reporting = False

    def report(result: dict[str, Any], ckpt_state: dict[str, Any] | None) -> None:
        nonlocal reporting
        result.update(where)
        reporting = True
        if ckpt_state is None:
            tune.report(result)
        else:
            with tempfile.TemporaryDirectory() as d:
                torch.save(ckpt_state, os.path.join(d, CHECKPOINT_FILE))
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
        reporting = False

    try:
        state = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                state = load_checkpoint(os.path.join(d, CHECKPOINT_FILE))
        run_trial(config, data, setup, report, state, dev)
    except Exception as err:
        if reporting:
            raise  # Tune's own (a stop, a lost driver): not the training's
        traceback.print_exc()
        worst = float("inf") if setup.mode == "min" else float("-inf")
        message = " ".join(f"{type(err).__name__}: {err}".split())[:500]
        tune.report({setup.metric: worst, "history": [], "best": {}, "final": True,
                     "trial_status": TrialStatus.ERROR.value, "stop_reason": message, "collapsed": False, **where})
