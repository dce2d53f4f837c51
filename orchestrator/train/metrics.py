"""The metrics a trial reports: each one's direction (+1: higher is better), which a task
reports, and the diagnostics reported beside them (no best value)."""

from __future__ import annotations

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
TASK_METRICS = {
    "classification": ("train_loss", "val_loss", "val_accuracy", "val_f1", "val_auc"),
    "regression": ("train_loss", "val_loss", "val_rmse", "val_mae", "val_r2"),
}
# Reported every epoch too, but diagnostics rather than scores (no best value).
DIAGNOSTICS = {
    "classification": ("val_top_class_share", "val_collapsed"),
    "regression": ("val_pred_std_ratio", "val_collapsed"),
}
