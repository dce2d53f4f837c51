"""scikit-learn's bundled handwritten digits as 1x8x8 images: a data factory (``data.factory``).

The rows of each split are those of the tabular digits (``data.source: "sklearn:digits"``) with the
same seed and fractions, so a CNN on these images and an MLP on that table are scored on the same
validation and test digits.
"""

from __future__ import annotations

import numpy as np
import torch


def split_rows(y: np.ndarray, seed: int, val_fraction: float, test_fraction: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (train, val, test), stratified by the class ``y``: the tabular data's split
    (:func:`orchestrator.train.data.prepare`), step for step, so that the same seed picks the same rows."""
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("need val_fraction > 0, test_fraction >= 0 and val_fraction + test_fraction < 1, "
                         f"got val_fraction={val_fraction!r}, test_fraction={test_fraction!r}")
    idx = np.arange(len(y))
    holdout = val_fraction + test_fraction
    idx_train, idx_rest = train_test_split(idx, test_size=holdout, random_state=seed, stratify=y)
    if test_fraction == 0:
        return idx_train, idx_rest, idx_rest[:0]
    idx_val, idx_test = train_test_split(idx_rest, test_size=test_fraction / holdout, random_state=seed,
                                         stratify=y[idx_rest])
    return idx_train, idx_val, idx_test


def images(seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> dict:
    """The 1,797 digits as float32 images of shape (1, 8, 8) in [0, 1] and int64 labels 0-9.

    Returns:
        {"train": (x, y), "val": (x, y), "test": (x, y)}, each a pair of tensors; no "test" when
        ``test_fraction`` is 0.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()  # bundled with scikit-learn: no download
    x = torch.from_numpy((digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8))
    y = torch.from_numpy(digits.target.astype(np.int64))
    train, val, test = split_rows(digits.target, seed, val_fraction, test_fraction)
    out = {"train": (x[train], y[train]), "val": (x[val], y[val])}
    if len(test):
        out["test"] = (x[test], y[test])
    return out
