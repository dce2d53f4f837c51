"""Training losses and the metrics every trial reports, with the collapse diagnostics.

The training loss is what the configured ``loss`` optimises (with class weights and label
smoothing). ``val_loss`` is the task's plain loss, whatever the training loss: cross-entropy for
classification (the binary cross-entropy of a sigmoid is the same number), and for regression the
mean squared error in units of the training target's standard deviation. So trials with different
losses, weights, smoothing or target scaling compare on one scale.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from orchestrator.train.scores import classification_scores

if TYPE_CHECKING:
    from orchestrator.config.schema import SweepConfig
    from orchestrator.space.space import Space
    from orchestrator.train.data import Dataset

# A classifier "collapsed" when one class takes at least this share of its predictions (and more
# than that class's true share); a regressor when its predictions' spread is below this fraction
# of the target's.
COLLAPSE_SHARE = 0.98
COLLAPSE_STD_RATIO = 0.01
REGRESSION_LOSSES = ("mse", "mae", "huber")


def resolve_loss(name: str, task: str, n_classes: int) -> str:
    """``auto`` -> bce for two classes, cross_entropy for more, mse for regression; checks the fit."""
    if name == "auto":
        if task == "regression":
            return "mse"
        return "bce" if n_classes == 2 else "cross_entropy"
    if task == "classification" and name in REGRESSION_LOSSES:
        raise ValueError(f"{name} is a regression loss, but the task is classification; use cross_entropy or bce")
    if task == "regression" and name not in REGRESSION_LOSSES:
        raise ValueError(f"{name} is a classification loss, but the task is regression; use mse, mae or huber")
    if name == "bce" and n_classes != 2:
        raise ValueError(f"bce needs two classes, the target has {n_classes}; use cross_entropy")
    return name


def class_weights(y_train: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse class frequency, n / (k n_c), so that a balanced dataset gets weight 1 everywhere."""
    counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=n_classes).astype(np.float64)
    weights = len(y_train) / (n_classes * np.maximum(counts, 1.0))
    return torch.as_tensor(weights, dtype=torch.float32)


class TaskLoss:
    """The configured training loss of one trial, and the task's plain loss for evaluation."""

    def __init__(self, hp: dict[str, Any], data: Dataset) -> None:
        n_classes = len(data.classes) if data.task == "classification" else 0
        self.task = data.task
        self.kind = resolve_loss(hp.get("loss", "auto"), data.task, n_classes)
        self.n_outputs = 1 if self.kind == "bce" or data.task == "regression" else n_classes
        self.smoothing = float(hp.get("label_smoothing", 0.0)) if data.task == "classification" else 0.0
        self.delta = float(hp.get("huber_delta", 1.0))
        self.weights: torch.Tensor | None = None
        if data.task == "classification" and hp.get("class_weights", "none") == "auto":
            self.weights = class_weights(data.y_train, n_classes)

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch."""
        if self.kind == "cross_entropy":
            return F.cross_entropy(out, y, weight=self.weights, label_smoothing=self.smoothing)
        if self.kind == "bce":
            target = y.to(out.dtype)
            if self.smoothing:
                target = target * (1.0 - self.smoothing) + 0.5 * self.smoothing
            per_row = F.binary_cross_entropy_with_logits(out.squeeze(1), target, reduction="none")
            if self.weights is None:
                return per_row.mean()
            w = self.weights.to(out.device)[y]
            return (per_row * w).sum() / w.sum()  # as cross_entropy's weighted mean
        pred = out.squeeze(1)
        if self.kind == "mae":
            return F.l1_loss(pred, y)
        if self.kind == "huber":
            return F.huber_loss(pred, y, delta=self.delta)
        return F.mse_loss(pred, y)

    def classes(self, out: torch.Tensor) -> torch.Tensor:
        return (out.squeeze(1) > 0).long() if self.kind == "bce" else out.argmax(1)

    def plain(self, out: torch.Tensor, y: torch.Tensor) -> float:
        """Unweighted, unsmoothed cross-entropy (classification), without underflow (see
        :func:`cross_entropy`)."""
        if self.kind == "bce":
            return binary_cross_entropy(out.squeeze(1), y)
        return cross_entropy(out, y)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy of ``logits`` (rows of class scores) for classes ``y``, in float64 and in
    a form that does not underflow: a confident, correct row's loss is ``log1p(sum of exp(z_j -
    z_y))`` over the other classes, a tiny positive number where ``logsumexp(z) - z_y`` in float32
    rounds to exactly 0 (at a margin of about 17). So overconfident models still rank by how
    confident they are, instead of tying at 0."""
    z = logits.detach().double()
    z = z - z.gather(1, y.view(-1, 1))  # each row relative to its true class's score (0 there)
    others = z.scatter(1, y.view(-1, 1), float("-inf"))
    top = others.max(1).values
    # log(1 + sum exp(others)): log1p of the sum when every other class scores lower (no
    # overflow), else logsumexp over all classes (the true class's 0 included).
    small = torch.log1p(torch.exp(others.clamp(max=0.0)).sum(1))
    large = torch.logsumexp(z, 1)
    return float(torch.where(top <= 0, small, large).mean()) if len(z) else float("nan")


def binary_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean binary cross-entropy of one logit per row, in float64: softplus of the signed margin,
    which stays positive (``exp(-margin)``) for a confident, correct row."""
    z = logits.detach().double()
    sign = 2.0 * y.to(torch.float64) - 1.0
    return float(F.softplus(-sign * z).mean()) if len(z) else float("nan")


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, data: Dataset, loss: TaskLoss, prefix: str,
             y_units: np.ndarray | None = None) -> dict[str, float]:
    """Loss, task metrics and collapse diagnostics of ``model`` on one split held in tensors."""
    model.eval()
    return scores(model(x), y, data, loss, prefix, y_units)


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable[tuple[Any, torch.Tensor]], data: Dataset,
                     loss: TaskLoss, prefix: str) -> dict[str, float]:
    """:func:`evaluate` over a split served in batches (several inputs: ``x`` a tuple)."""
    model.eval()
    outs, ys = [], []
    for x, y in batches:
        outs.append(model(*x) if isinstance(x, (tuple, list)) else model(x))
        ys.append(y)
    out, y = torch.cat(outs), torch.cat(ys)
    units = y.double().cpu().numpy() if data.task == "regression" else None
    return scores(out, y, data, loss, prefix, units)


def scores(out: torch.Tensor, y: torch.Tensor, data: Dataset, loss: TaskLoss, prefix: str,
           y_units: np.ndarray | None = None) -> dict[str, float]:
    """Loss, task metrics and collapse diagnostics of a split's model outputs.

    Classification: ``loss``, ``accuracy``, ``top_class_share`` (the share of the most predicted
    class), ``f1`` (macro F1) and ``auc`` (ROC AUC, one-vs-rest for more than two classes; see
    :mod:`orchestrator.train.scores`). Regression, in the target's units (``y_units``): ``loss``
    (see module doc), ``rmse``, ``mae``, ``r2``, ``pred_std_ratio`` (spread of the predictions over
    the target's). Plus ``collapsed`` (1.0 or 0.0).
    """
    if data.task == "classification":
        pred = loss.classes(out)
        counts = torch.bincount(pred, minlength=max(len(data.classes), 1))
        top = int(counts.argmax())
        share = float(counts[top]) / max(len(pred), 1)
        true_share = float((y == top).float().mean()) if len(y) else 0.0
        collapsed = share >= COLLAPSE_SHARE and share > true_share + 0.01
        ranked = classification_scores(out.detach().float().cpu().numpy(), y.cpu().numpy(),
                                       max(len(data.classes), 2), binary_logit=loss.kind == "bce")
        return {
            f"{prefix}_loss": loss.plain(out, y),
            f"{prefix}_accuracy": float((pred == y).float().mean()),
            f"{prefix}_f1": ranked["f1"],
            f"{prefix}_auc": ranked["auc"],
            f"{prefix}_top_class_share": share,
            f"{prefix}_collapsed": float(collapsed),
        }
    units = data.to_target_units(out.squeeze(1).double().cpu().numpy())
    truth = np.asarray(y_units, dtype=np.float64)
    err = units - truth
    ss_tot = float(((truth - truth.mean()) ** 2).sum()) or 1.0
    spread = float(truth.std()) or 1.0
    ratio = float(units.std()) / spread
    return {
        f"{prefix}_loss": float(np.mean((err / data.target_std) ** 2)),
        f"{prefix}_rmse": float(np.sqrt(np.mean(err ** 2))),
        f"{prefix}_mae": float(np.mean(np.abs(err))),
        f"{prefix}_r2": 1.0 - float((err ** 2).sum()) / ss_tot,
        f"{prefix}_pred_std_ratio": ratio,
        f"{prefix}_collapsed": float(ratio < COLLAPSE_STD_RATIO),
    }


def check_task(cfg: SweepConfig, data: Dataset, space: Space) -> None:
    """The objective and every loss the sweep can train with must fit the data's task.

    Raises:
        ConfigError: naming the key (objective.metric, objective.mode, train.loss, search_space.loss).
    """
    from orchestrator.config.load import did_you_mean
    from orchestrator.errors import ConfigError
    from orchestrator.train.metrics import METRIC_DIRECTIONS, TASK_METRICS

    valid = TASK_METRICS[data.task]
    if cfg.objective.metric not in valid:
        raise ConfigError(
            f"objective.metric: '{cfg.objective.metric}' is not reported for {data.task}"
            f"{did_you_mean(cfg.objective.metric, valid)}; valid: {', '.join(valid)}"
        )
    expected = "min" if METRIC_DIRECTIONS[cfg.objective.metric] < 0 else "max"
    if cfg.objective.mode != expected:
        raise ConfigError(f"objective.mode: {cfg.objective.metric} should be '{expected}'imised "
                          f"(got {cfg.objective.mode!r})")
    knob = space.knobs.get("loss")
    values = [("search_space.loss", v) for v in knob.values] if knob is not None else [("train.loss", cfg.train.loss)]
    for key, value in values:
        try:
            resolve_loss(value, data.task, len(data.classes))
        except ValueError as err:
            raise ConfigError(f"{key}: {err} (got {value!r})") from None
