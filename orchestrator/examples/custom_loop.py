"""A training loop written by hand, as a trial function (``trainable: "orchestrator.examples.custom_loop:fit"``).

orch owns the sweep: it builds the model and the data loaders, decides when a trial stops and when
a checkpoint is kept. The loop owns the training: plain PyTorch, one epoch at a time, reported back
through ``ctx``. This one is for classification (cross-entropy on class ids, accuracy).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from orchestrator.train.context import TrialContext


def adamw_settings(config: dict[str, Any]) -> dict[str, Any]:
    """AdamW's settings from the trial's hyperparameters (PyTorch's defaults where one is absent)."""
    return {
        "lr": config["lr"],
        "weight_decay": config.get("weight_decay", 0.01),
        "betas": (config.get("beta1", 0.9), config.get("beta2", 0.999)),
        "eps": config.get("eps", 1e-8),
    }


def checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> dict[str, Any]:
    """What a resume needs: the weights, the optimizer's moments and the epoch they are at."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}


def fit(config: dict[str, Any], ctx: TrialContext) -> None:
    """Train ``ctx.build_model()`` with AdamW for up to ``ctx.max_epochs`` epochs, reporting each."""
    model = ctx.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), **adamw_settings(config))
    first_epoch = 1

    # Resume (after a lost node, or PBT copying a better trial): the saved weights and optimizer
    # moments, then this trial's own settings again, which PBT may just have changed.
    state = ctx.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group.update(adamw_settings(config))
        first_epoch = state["epoch"] + 1

    for epoch in range(first_epoch, ctx.max_epochs + 1):
        # Train.
        model.train()
        train_loss, n_train = 0.0, 0
        for x, y in ctx.loader("train"):
            x, y = x.to(ctx.device), y.to(ctx.device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * len(y)
            n_train += len(y)

        # Evaluate.
        model.eval()
        val_loss, correct, n_val = 0.0, 0, 0
        with torch.no_grad():
            for x, y in ctx.loader("val"):
                x, y = x.to(ctx.device), y.to(ctx.device)
                logits = model(x)
                val_loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(dim=1) == y).sum().item()
                n_val += len(y)

        # Report. The checkpoint goes as a function: orch calls it only when it keeps one. The model
        # goes too: orch keeps its weights at the trial's best epoch (the model the sweep hands over).
        metrics = {"train_loss": train_loss / n_train, "val_loss": val_loss / n_val, "val_accuracy": correct / n_val}
        ctx.report(epoch, metrics, state=partial(checkpoint, model, optimizer, epoch), model=model)
        if ctx.should_stop:
            break
