"""Optimisers, learning-rate schedules and gradient clipping, built from a trial's hyperparameters.

The schedule is a function of training progress in (fractional) epochs, not of optimiser steps:
it stays correct when the batch size grows during training, and a trial restored with new
hyperparameters (population-based training) continues on the same curve with its new ``lr``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

# One-cycle: the shape of torch.optim.lr_scheduler.OneCycleLR's defaults (cosine annealing).
ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1.0e4
WARMUP_START = 0.01  # a linear warm-up starts at this fraction of lr
PLATEAU_THRESHOLD = 1.0e-4  # relative improvement that counts, as torch's ReduceLROnPlateau


def build_optimizer(params: Iterable[nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW (betas, eps); weight decay for all three."""
    name = hp["optimizer"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"],
                               nesterov=bool(hp["nesterov"]) and hp["momentum"] > 0,
                               weight_decay=hp["weight_decay"])
    if name in ("adam", "adamw"):
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return cls(params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                   weight_decay=hp["weight_decay"])
    raise ValueError(f"unknown optimizer {name!r}")


def apply_hyperparameters(optimizer: torch.optim.Optimizer, hp: dict[str, Any]) -> None:
    """Write ``hp`` into the optimiser's parameter groups.

    ``load_state_dict`` restores the hyperparameters saved with a checkpoint; a trial resumed with
    changed ones (an exploit in population-based training) must train with the new values.
    """
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"] = hp["lr"]
        group["weight_decay"] = hp["weight_decay"]
        if "momentum" in group and isinstance(optimizer, torch.optim.SGD):
            group["momentum"] = hp["momentum"]
            group["nesterov"] = bool(hp["nesterov"]) and hp["momentum"] > 0
        if "betas" in group:
            group["betas"] = (hp["beta1"], hp["beta2"])
            group["eps"] = hp["eps"]


class LRSchedule:
    """Learning rate = ``lr`` x warm-up(t) x shape(t) [x plateau decay], t in epochs.

    Shapes, over ``total_epochs`` after the warm-up: ``constant``; ``step`` (x gamma every
    ``lr_step_epochs``); ``cosine`` (to ``lr_min_ratio`` x lr); ``onecycle`` (up from lr/25 over the
    first 30%, then down to lr/25e4, as torch's OneCycleLR); ``plateau`` (x gamma after
    ``plateau_patience`` epochs without improvement of the objective, as ReduceLROnPlateau).
    """

    def __init__(self, hp: dict[str, Any], total_epochs: int, direction: int = -1) -> None:
        self.kind = hp.get("lr_schedule", "constant")
        self.lr = float(hp["lr"])
        self.total = float(total_epochs)
        self.warmup = float(hp.get("warmup_epochs") or 0.0)
        self.step_epochs = int(hp.get("lr_step_epochs", 10))
        self.gamma = float(hp.get("lr_gamma", 0.1))
        self.patience = int(hp.get("plateau_patience", 3))
        self.min_ratio = float(hp.get("lr_min_ratio", 0.0))
        self.direction = direction
        # plateau state
        self.decay = 1.0
        self.best: float | None = None
        self.bad_epochs = 0

    def factor(self, t: float) -> float:
        """The multiplier of ``lr`` at progress ``t`` (epochs since the start, fractional)."""
        warm = 1.0
        if self.warmup > 0 and t < self.warmup:
            warm = WARMUP_START + (1.0 - WARMUP_START) * t / self.warmup
        span = max(self.total - self.warmup, 1e-9)
        u = min(max((t - self.warmup) / span, 0.0), 1.0)  # progress after the warm-up, 0..1
        if self.kind == "step":
            shape = self.gamma ** math.floor(max(t - self.warmup, 0.0) / self.step_epochs)
        elif self.kind == "cosine":
            shape = self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * u))
        elif self.kind == "onecycle":
            lo, end = 1.0 / ONECYCLE_DIV_FACTOR, 1.0 / (ONECYCLE_DIV_FACTOR * ONECYCLE_FINAL_DIV_FACTOR)
            if u < ONECYCLE_PCT_START:
                shape = _cos_anneal(lo, 1.0, u / ONECYCLE_PCT_START)
            else:
                shape = _cos_anneal(1.0, end, (u - ONECYCLE_PCT_START) / (1.0 - ONECYCLE_PCT_START))
        else:  # constant, plateau
            shape = 1.0
        return warm * shape * self.decay

    def lr_at(self, t: float) -> float:
        return self.lr * self.factor(t)

    def set(self, optimizer: torch.optim.Optimizer, t: float) -> float:
        lr = self.lr_at(t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def epoch_end(self, objective: float) -> None:
        """Plateau: count epochs without a relative improvement; decay after ``patience`` of them."""
        if self.kind != "plateau" or not math.isfinite(objective):
            return
        if self.best is None or (objective - self.best) * self.direction > PLATEAU_THRESHOLD * abs(self.best):
            self.best, self.bad_epochs = objective, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.decay *= self.gamma
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.best, self.bad_epochs = state["decay"], state["best"], state["bad_epochs"]


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * min(max(pct, 0.0), 1.0)) + 1.0)


def clip_gradients(parameters: Iterable[nn.Parameter], hp: dict[str, Any]) -> None:
    """Clip by global L2 norm (``grad_clip_by: norm``) or each element (``value``) at ``grad_clip``."""
    limit = hp.get("grad_clip")
    if not limit:
        return
    if hp.get("grad_clip_by", "norm") == "value":
        nn.utils.clip_grad_value_(parameters, float(limit))
    else:
        nn.utils.clip_grad_norm_(parameters, float(limit))


def batch_size_at(hp: dict[str, Any], epoch: int) -> int:
    """The batch size of ``epoch`` (1-based): doubled every ``batch_growth_every`` epochs up to
    ``batch_size_max`` (never below the starting size)."""
    size = max(1, int(hp["batch_size"]))
    every = hp.get("batch_growth_every")
    if not every:
        return size
    grown = size * 2 ** ((epoch - 1) // int(every))
    return max(size, min(grown, int(hp.get("batch_size_max") or grown)))
