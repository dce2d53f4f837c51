"""The metrics a trial reports: each one's direction (+1: higher is better), which a task
reports, and the diagnostics reported beside them (no best value)."""

from __future__ import annotations

from orchestrator.config.metric_names import DIAGNOSTICS, TASK_METRICS

__all__ = ["DIAGNOSTICS", "METRIC_DIRECTIONS", "TASK_METRICS"]

METRIC_DIRECTIONS = {
    "train_loss": -1,
    "val_loss": -1,
    "val_accuracy": +1,
    "val_f1": +1,  # macro F1
    "val_auc": +1,  # ROC AUC (one-vs-rest macro for more than two classes)
    "val_rmse": -1,
    "val_mae": -1,
    "val_r2": +1,
}
