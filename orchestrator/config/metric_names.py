"""The built-in metrics of each task, by name: what the trainer reports every epoch and what the
results store keeps a column for. At the bottom stage, so that both the trainer
(orchestrator/train/metrics.py, which scores them) and the store (orchestrator/store/layout.py,
its stable schema) read the one list."""

from __future__ import annotations

TASK_METRICS = {
    "classification": ("train_loss", "val_loss", "val_accuracy", "val_f1", "val_auc"),
    "regression": ("train_loss", "val_loss", "val_rmse", "val_mae", "val_r2"),
}
# Reported every epoch too, but diagnostics rather than scores (no best value).
DIAGNOSTICS = {
    "classification": ("val_top_class_share", "val_collapsed"),
    "regression": ("val_pred_std_ratio", "val_collapsed"),
}
