"""orch's own training loop: one implementation of the trial contract (orchestrator/train/context.py).

:func:`fit` is a flat function: seed, build, then per epoch train, validate and ``ctx.report``.
It knows nothing of Ray; the sweep runs it through the same adapter as any user's training function
(orchestrator/tune/trial.py), and :func:`run_trial` runs it with results to a plain callback
(benchmarks, ``orch check``, re-tuning's drift check).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from orchestrator.train import data as data_mod
from orchestrator.train.context import (  # noqa: F401 - the contract's names, importable from here too
    CHECKPOINT_FILE,
    CheckpointError,
    LocalBackend,
    TrialContext,
    TrialSetup,
    hyperparameters,
    is_better,
    load_checkpoint,
    plain,
)
from orchestrator.train.context import default_device as device  # noqa: F401
from orchestrator.train.losses import TaskLoss, evaluate, evaluate_batches
from orchestrator.train.metrics import TASK_METRICS
from orchestrator.train.optim import (
    LRSchedule,
    apply_hyperparameters,
    batch_size_at,
    build_optimizer,
    clip_gradients,
)

if TYPE_CHECKING:
    from orchestrator.train.data import Dataset, Variants

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


@dataclass
class Parts:
    """Everything a trial builds from its hyperparameters."""

    hp: dict[str, Any]
    data: Dataset  # the Dataset this trial trains on
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    loss: TaskLoss


def build(hp: dict[str, Any], data: Dataset | Variants, model_name: str, max_epochs: int, direction: int = -1,
          dev: torch.device | None = None) -> Parts:
    """Model, optimiser, schedule and loss for ``hp`` (``data`` may hold several scalings)."""
    from orchestrator.config import models

    data = data_mod.select(data, hp)
    loss = TaskLoss(hp, data)
    model_hp = {k: hp[k] for k in models.hyperparameters(model_name) if k in hp}
    model = models.build(model_name, data.input_shape, loss.n_outputs, data.task,
                         **model_hp).to(dev or torch.device("cpu"))
    if loss.weights is not None:
        loss.weights = loss.weights.to(dev or torch.device("cpu"))
    optimizer = build_optimizer(model.parameters(), hp)
    return Parts(hp, data, model, optimizer, LRSchedule(hp, max_epochs, direction), loss)


def _tensor(a: Any, dev: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.array(a)).to(dev)


def _forward(model: nn.Module, x: Any) -> torch.Tensor:
    return model(*x) if isinstance(x, (tuple, list)) else model(x)


def _to(x: Any, dev: torch.device) -> Any:
    if isinstance(x, (tuple, list)):
        return type(x)(_to(t, dev) for t in x)
    return x.to(dev, non_blocking=True)


class Splits:
    """A trial's splits on its device: in-memory tensors indexed batch by batch, or DataLoaders."""

    def __init__(self, data: Dataset, ctx: TrialContext, dev: torch.device) -> None:
        self.data, self.ctx, self.dev = data, ctx, dev
        if data.in_memory:
            # Tensors once per trial, straight from the shared arrays.
            self.x = {s: _tensor(getattr(data, f"x_{s}"), dev) for s in ("train", "val", "test")}
            self.y = {s: _tensor(getattr(data, f"y_{s}"), dev) for s in ("train", "val", "test")}
            self.n_train = len(self.x["train"])
            self.has_test = len(self.x["test"]) > 0
        else:
            assert data.sets is not None
            self.n_train = len(data.sets["train"])
            self.has_test = bool(data.sets.get("test") is not None and len(data.sets["test"]))

    def train_batches(self, batch_size: int, shuffle: bool, gen: torch.Generator, epoch: int) -> Iterator[Any]:
        if self.data.in_memory:
            order = (torch.randperm(self.n_train, generator=gen).to(self.dev) if shuffle
                     else torch.arange(self.n_train, device=self.dev))
            for i in range(0, self.n_train, batch_size):
                idx = order[i:i + batch_size]
                yield self.x["train"][idx], self.y["train"][idx]
            return
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        loader = self.ctx.loader("train", batch_size=batch_size, shuffle=shuffle,
                                 generator=torch.Generator().manual_seed(seed))
        for x, y in loader:
            yield _to(x, self.dev), y.reshape(-1).to(self.dev, non_blocking=True)  # (B, 1) targets: (B,)

    def evaluate(self, model: nn.Module, loss: TaskLoss, split: str, batch_size: int) -> dict[str, float]:
        units = self.data.y_val_units if split == "val" else self.data.y_test_units
        if self.data.in_memory:
            return evaluate(model, self.x[split], self.y[split], self.data, loss, split, units)
        loader = self.ctx.loader(split, batch_size=max(batch_size, 256), shuffle=False)
        return evaluate_batches(model, ((_to(x, self.dev), y.reshape(-1).to(self.dev, non_blocking=True))
                                        for x, y in loader),
                                self.data, loss, split)


def fit(config: dict[str, Any], ctx: TrialContext) -> None:
    """Train one configuration: orch's trainer, a training function like any other."""
    hp = ctx.config  # (threads are set for every training function: run_trial, tune_trainable)
    gen = seed_everything(int(hp["seed"]), bool(hp.get("deterministic")))
    dev = ctx.device
    parts = build(hp, ctx.data, ctx.setup.model, ctx.max_epochs, ctx.direction, dev)
    data, model, optimizer, schedule, loss_fn = parts.data, parts.model, parts.optimizer, parts.schedule, parts.loss
    splits = Splits(data, ctx, dev)
    n_train = splits.n_train
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    state = ctx.restore()
    resumed: dict[str, float] = {}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        apply_hyperparameters(optimizer, hp)  # the checkpoint's own values were restored with it
        schedule.load_state_dict(state["schedule"])
        set_rng_state(state["rng"], gen)
        # The restored weights' own score, before any training: after an exploit (population-based
        # training) it is the donor's, which shows that the weights came across.
        resumed = {"resumed_val_loss": splits.evaluate(model, loss_fn, "val", batch_size_at(hp, ctx.start_epoch))[
            "val_loss"]}

    for epoch in range(ctx.start_epoch, ctx.max_epochs + 1):
        # Train one epoch over (reshuffled) mini-batches.
        model.train()
        batch_size = batch_size_at(hp, epoch)
        steps = max(1, math.ceil(n_train / batch_size))
        total, seen, lr = 0.0, 0, schedule.lr_at(epoch - 1)
        for step, (x, y) in enumerate(splits.train_batches(batch_size, bool(hp.get("shuffle", True)), gen, epoch)):
            if len(y) < 2 and n_train >= 2 and has_bn:
                continue  # batch norm cannot train on a single row
            lr = schedule.set(optimizer, epoch - 1 + step / steps)
            loss = loss_fn(_forward(model, x), y)
            value = loss.item()
            if not math.isfinite(value):
                total, seen = value, 1
                break
            if ctx.first_loss is None:
                ctx.first_loss = value  # divergence is judged against the first batch's loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model.parameters(), hp)
            optimizer.step()
            total += value * len(y)
            seen += len(y)
        train_loss = total / max(seen, 1)

        # Validate and report.
        if math.isfinite(train_loss):
            metrics = {"train_loss": train_loss, **splits.evaluate(model, loss_fn, "val", batch_size)}
        else:
            metrics = {"train_loss": train_loss, **{m: float("nan") for m in TASK_METRICS[data.task][1:]}}
        metrics.update(lr=lr, batch_size=batch_size, **resumed)
        resumed = {}
        schedule.epoch_end(metrics.get(ctx.setup.metric, float("nan")))

        def checkpoint(epoch: int = epoch) -> dict[str, Any]:
            # Tensors and plain values only: it is loaded with torch.load(weights_only=True).
            return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "rng": rng_state(gen), "schedule": plain(schedule.state_dict())}

        # The held-out test split at the trial's best epochs only: the store keeps the scores of the
        # weights the trial hands over. Reported, never used to choose.
        test = (lambda size=batch_size: splits.evaluate(model, loss_fn, "test", size)) if splits.has_test else None
        ctx.report(epoch, metrics, state=checkpoint, test=test, model=model)
        if ctx.should_stop:
            return


def run_trial(config: dict[str, Any], data: Dataset | Variants, setup: TrialSetup, report: Reporter,
              state: dict[str, Any] | None = None, dev: torch.device | None = None) -> dict[str, Any]:
    """Run the sweep's training function on one configuration outside Ray; return its final result.

    ``report(result, checkpoint)`` is called at the epochs the sweep asked for and at the end;
    ``result["history"]`` holds every epoch since the previous report. ``state``: a checkpoint
    (as ``report`` was given) to resume from, its hyperparameters replaced by ``config``'s.
    """
    fn = trainable(setup)
    torch.set_num_threads(setup.threads)
    ctx = TrialContext(config, setup, data, LocalBackend(report, state), dev)
    fn(ctx.config, ctx)
    return ctx.finish()


def trainable(setup: TrialSetup) -> Callable[[dict[str, Any], TrialContext], None]:
    """The sweep's training function (orch's :func:`fit` unless the config names another)."""
    from orchestrator.config.imports import import_callable, project_on_path
    from orchestrator.train.context import BUILT_IN

    project_on_path(setup.project)
    if setup.trainable == BUILT_IN:
        return fit
    return import_callable(setup.trainable, "trainable")


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


