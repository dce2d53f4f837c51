"""The training loop of one trial: orch calls ``fit(config, ctx)`` for every trial of the sweep.

``config`` holds the trial's hyperparameters, with the values the search sampled: the train section
of conf/sweep.yaml (lr, batch_size, optimizer, weight_decay, beta1, beta2, eps, momentum, seed, ...),
the model's (hidden, layers, dropout) and any ``params:`` of your own. ``ctx`` is the trial's link
to orch:

    ctx.data            .train, .val, .test (torch Datasets of (x, y)), .task, .n_outputs, .input_shape
    ctx.loader(split)   a DataLoader over "train", "val" or "test" (batch_size=..., shuffle=... to choose)
    ctx.build_model()   the model conf/sweep.yaml configures (models/net.py), on ctx.device
    ctx.device          where to train: a GPU when the trial has one
    ctx.max_epochs      the last epoch (scheduler.max_epochs)
    ctx.report(epoch, metrics, state=..., model=...)   once per epoch, from 1: the scheduler compares
                        trials on the metrics, the state is the checkpoint to continue from, and
                        orch keeps the model's weights of the trial's best epoch (orch export)
    ctx.should_stop     true once the trial is over (its last epoch, a diverging loss, train.patience);
                        when the scheduler stops a trial early (ASHA), Ray ends it inside ctx.report
    ctx.restore()       None, or the state of a report to continue from: after a lost node, or when
                        population-based training copied a better trial's weights into this one
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def optimizer_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's settings from the trial's hyperparameters."""
    settings: dict[str, Any] = {"lr": config["lr"], "weight_decay": config.get("weight_decay", 0.0)}
    if config.get("optimizer", "adam") == "sgd":
        settings.update(momentum=config.get("momentum", 0.9), nesterov=config.get("nesterov", False))
    else:
        settings.update(betas=(config.get("beta1", 0.9), config.get("beta2", 0.999)), eps=config.get("eps", 1e-8))
    return settings


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, loss_fn: nn.Module, regression: bool, device: Any) -> dict[str, float]:
    """The model's mean loss over a split, and its accuracy for a classification task."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        if regression:
            out = out.reshape(y.shape)
        else:
            correct += int((out.argmax(dim=1) == y).sum())
        loss_sum += float(loss_fn(out, y)) * len(y)
        n += len(y)
    return {"loss": loss_sum / n} if regression else {"loss": loss_sum / n, "accuracy": correct / n}


def fit(config: dict[str, Any], ctx: Any) -> None:
    """Train one trial: a report per epoch until ctx.max_epochs, or until the scheduler stops it."""
    torch.manual_seed(config.get("seed", 0))
    regression = ctx.data.task == "regression"
    loss_fn = nn.MSELoss() if regression else nn.CrossEntropyLoss()
    train_loader = ctx.loader("train", batch_size=config["batch_size"], shuffle=True)
    val_loader = ctx.loader("val", shuffle=False)

    # The model and its optimizer, from the trial's hyperparameters.
    model = ctx.build_model()
    optimizer = OPTIMIZERS[config.get("optimizer", "adam")](model.parameters(), **optimizer_settings(config))

    # Continue from a saved state: after a lost node, or when population-based training copied a
    # better trial here. config holds this trial's hyperparameters now, which win over the saved ones.
    start = 1
    state = ctx.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group.update(optimizer_settings(config))
        start = state["epoch"] + 1

    for epoch in range(start, ctx.max_epochs + 1):
        # Train one epoch.
        model.train()
        loss_sum, n = 0.0, 0
        for x, y in train_loader:
            x, y = x.to(ctx.device), y.to(ctx.device)
            out = model(x)
            loss = loss_fn(out.reshape(y.shape) if regression else out, y)
            optimizer.zero_grad()
            loss.backward()
            if config.get("grad_clip"):
                nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
            optimizer.step()
            loss_sum += float(loss) * len(y)
            n += len(y)

        # Validate and report. The state is a function, called only when orch keeps this epoch's checkpoint.
        val = evaluate(model, val_loader, loss_fn, regression, ctx.device)
        metrics = {"train_loss": loss_sum / n, **{f"val_{name}": value for name, value in val.items()}}
        ctx.report(epoch, metrics, state=lambda epoch=epoch: {
            "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, model=model)
        if ctx.should_stop:
            return
