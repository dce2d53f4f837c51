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
from typing import Any

import numpy as np
import torch
from torch import nn

# Direction of every metric the trainer reports: +1 higher is better, -1 lower is better.
METRIC_DIRECTIONS = {
    "train_loss": -1,
    "val_loss": -1,
    "val_accuracy": +1,
    "val_rmse": -1,
    "val_mae": -1,
    "val_r2": +1,
}
TASK_METRICS = {
    "classification": ("train_loss", "val_loss", "val_accuracy"),
    "regression": ("train_loss", "val_loss", "val_rmse", "val_mae", "val_r2"),
}
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


Report = Callable[[dict[str, Any], dict[str, Any] | None], None]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def build_optimizer(params, hp: dict[str, Any]) -> torch.optim.Optimizer:
    name = hp["optimizer"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"],
                               nesterov=bool(hp["nesterov"]) and hp["momentum"] > 0,
                               weight_decay=hp["weight_decay"])
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
               weight_decay=hp["weight_decay"])


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, data, loss_fn, prefix: str) -> dict[str, float]:
    """Loss and task metrics on one split (regression errors in the target's own units)."""
    model.eval()
    out = model(x)
    if data.task == "classification":
        return {
            f"{prefix}_loss": float(loss_fn(out, y)),
            f"{prefix}_accuracy": float((out.argmax(1) == y).float().mean()),
        }
    pred = out.squeeze(1)
    err = (pred - y) * data.target_std
    ss_tot = float(((y - y.mean()) ** 2).sum()) or 1.0
    return {
        f"{prefix}_loss": float(loss_fn(pred, y)),
        f"{prefix}_rmse": float(err.pow(2).mean().sqrt()),
        f"{prefix}_mae": float(err.abs().mean()),
        f"{prefix}_r2": 1.0 - float(((pred - y) ** 2).sum()) / ss_tot,
    }


def is_better(value: float, best: float | None, direction: int, min_delta: float = 0.0) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value - best) * direction > min_delta


def run_trial(config: dict[str, Any], data, setup: TrialSetup, report: Report,
              state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one configuration; return the final report.

    ``report(metrics, checkpoint_state)`` is called at the epochs the sweep asked for and at the
    end; ``metrics["history"]`` holds every epoch since the previous report. ``state`` is a
    checkpoint to resume from.
    """
    hp = {**setup.base, **{k: v for k, v in config.items() if not k.startswith("_")}}  # _stage: orch's own
    torch.set_num_threads(setup.threads)
    gen = seed_everything(int(hp["seed"]))
    classification = data.task == "classification"

    # Data: tensors once per trial, straight from the shared arrays.
    x_train, y_train = torch.as_tensor(np.array(data.x_train)), torch.as_tensor(np.array(data.y_train))
    x_val, y_val = torch.as_tensor(np.array(data.x_val)), torch.as_tensor(np.array(data.y_val))
    x_test, y_test = torch.as_tensor(np.array(data.x_test)), torch.as_tensor(np.array(data.y_test))
    n_train, batch_size = len(x_train), max(1, int(hp["batch_size"]))

    # Model, optimizer, loss.
    from models import registry

    model_hp = {k: hp[k] for k in registry.hyperparameters(setup.model)}
    model = registry.build(setup.model, data.n_features, data.n_outputs, **model_hp)
    optimizer = build_optimizer(model.parameters(), hp)
    loss_fn = nn.CrossEntropyLoss() if classification else nn.MSELoss()
    direction = METRIC_DIRECTIONS.get(setup.metric, -1 if setup.mode == "min" else +1)

    # Resume.
    start_epoch, best, best_epoch, since_best = 1, {}, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        best, best_epoch, since_best = state["best"], state["best_epoch"], state["since_best"]
        torch.set_rng_state(state["rng"]["torch"])
        gen.set_state(state["rng"]["gen"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    history: list[dict[str, Any]] = []
    status, reason = "completed", ""
    metrics: dict[str, Any] = {}
    started = time.perf_counter()
    for epoch in range(start_epoch, setup.max_epochs + 1):
        t0 = time.perf_counter()
        # Train one epoch over shuffled mini-batches.
        model.train()
        order = torch.randperm(n_train, generator=gen)
        total, seen = 0.0, 0
        for i in range(0, n_train, batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2 and n_train >= 2 and any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
                continue  # batch norm cannot train on a single row
            out = model(x_train[idx])
            loss = loss_fn(out if classification else out.squeeze(1), y_train[idx])
            if not torch.isfinite(loss):
                total, seen = loss.item(), 1
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if hp.get("grad_clip"):
                nn.utils.clip_grad_norm_(model.parameters(), float(hp["grad_clip"]))
            optimizer.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        train_loss = total / max(seen, 1)

        # Validate and record.
        if math.isfinite(train_loss):
            metrics = {"train_loss": train_loss, **evaluate(model, x_val, y_val, data, loss_fn, "val")}
        else:
            metrics = {"train_loss": train_loss, **{m: float("nan") for m in TASK_METRICS[data.task][1:]}}
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

        # Decide whether this trial goes on.
        if not all(math.isfinite(v) for k, v in metrics.items() if k in METRIC_DIRECTIONS):
            status, reason = "diverged", f"non-finite loss at epoch {epoch}"
        elif hp.get("patience") and since_best >= int(hp["patience"]):
            status, reason = "stopped_early", f"no improvement of {setup.metric} for {since_best} epochs"
        last = epoch == setup.max_epochs or status != "completed"

        # Report when the scheduler decides, at checkpoints, and at the end.
        if last or setup.report_epochs is None or epoch in setup.report_epochs:
            result = _result(metrics, history, best, best_epoch, setup, last, status, reason,
                             time.perf_counter() - started)
            if status != "diverged" and len(x_test):
                # The held-out test split, at reports only (a trial may be stopped after any of
                # them): the store keeps the last, for the model the trial ended with. Reported,
                # never used to choose.
                result["test"] = evaluate(model, x_test, y_test, data, loss_fn, "test")
            checkpoint = None
            if not last and (epoch % setup.checkpoint_every == 0 or setup.report_epochs is None):
                checkpoint = {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "best": best, "best_epoch": best_epoch, "since_best": since_best, "hp": hp,
                    "rng": {"torch": torch.get_rng_state(), "gen": gen.get_state(),
                            "numpy": np.random.get_state(), "python": random.getstate()},
                }
            report(result, checkpoint)
            history = []
        if last:
            return result
    return _result(metrics, history, best, best_epoch, setup, True, status, reason, 0.0)


def _result(metrics, history, best, best_epoch, setup, last, status, reason, elapsed) -> dict[str, Any]:
    result = dict(metrics)
    # Schedulers need a number: a diverged trial is the worst possible result, not NaN.
    objective = result.get(setup.metric, float("nan"))
    if not (isinstance(objective, float) and math.isfinite(objective)):
        result[setup.metric] = float("inf") if setup.mode == "min" else float("-inf")
    result.update(
        history=history,
        best={k: v for k, v in best.items() if not k.startswith("_")},
        best_epoch=best_epoch,
        final=last,
        trial_status=status if last else "running",
        stop_reason=reason,
        train_time_s=elapsed,
    )
    return result


def tune_trainable(config: dict[str, Any], data=None, setup: TrialSetup | None = None) -> None:
    """Ray Tune function trainable: ``tune.with_parameters(tune_trainable, data=..., setup=...)``."""
    from ray import tune

    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), weights_only=False)

    def report(result: dict[str, Any], ckpt_state: dict[str, Any] | None) -> None:
        if ckpt_state is None:
            tune.report(result)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(ckpt_state, os.path.join(d, CHECKPOINT_FILE))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))

    run_trial(config, data, setup, report, state)
