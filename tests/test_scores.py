"""Classification scores: macro F1 and ROC AUC against hand-computed values and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import f1_score, roc_auc_score

from orchestrator.train.scores import classification_scores

# Four rows, two classes. Predicted (logit > 0): 1, 0, 1, 1 against 1, 0, 0, 1. Class 1: 2 hits,
# 1 false alarm, F1 = 4/5; class 0: 1 hit, 1 miss, F1 = 2/3; macro 11/15. AUC: positives score
# {2, 1}, negatives {-1, 1}: of the 4 pairs, 3 are ordered right and one is a tie (1/2): 3.5/4.
BINARY_LOGITS = np.array([2.0, -1.0, 1.0, 1.0])
BINARY_Y = np.array([1, 0, 0, 1])
BINARY_EXPECTED = {"f1": 11 / 15, "auc": 0.875}

# Six rows, three classes, given as probabilities (logits = their logs), predicted 0, 1, 1, 0, 2, 2.
# F1: class 0 all right (1); classes 1 and 2 one hit, one miss, one false alarm each (1/2): macro 2/3.
# One-vs-rest AUC: class 0's rows (0.6, 0.5) rank above all four others (1). Class 1's rows score
# 0.45 and 0.15 against 0.3, 0.4, 0.22, 0.05: 4 + 1 of 8 pairs; class 2's 0.25 and 0.75 against
# 0.1, 0.3, 0.28, 0.55: 1 + 4 of 8. Mean (1 + 5/8 + 5/8) / 3 = 3/4. (Distinct values in every column:
# equal probabilities from different rows can differ in the last bit, and so would not tie.)
MULTI_PROBABILITIES = np.array([
    [0.6, 0.3, 0.1],
    [0.25, 0.45, 0.3],
    [0.35, 0.4, 0.25],
    [0.5, 0.22, 0.28],
    [0.3, 0.15, 0.55],
    [0.2, 0.05, 0.75],
])
MULTI_LOGITS = np.log(MULTI_PROBABILITIES)
MULTI_Y = np.array([0, 1, 2, 0, 1, 2])
MULTI_EXPECTED = {"f1": 2 / 3, "auc": 0.75}


def test_binary_single_logit_by_hand():
    assert classification_scores(BINARY_LOGITS, BINARY_Y, 2, binary_logit=True) == pytest.approx(BINARY_EXPECTED)
    # (N, 1) as from a one-unit head, and float targets as a BCE loss has them: the same
    column = BINARY_LOGITS[:, None].astype(np.float32)
    assert classification_scores(column, BINARY_Y.astype(np.float32), 2, binary_logit=True) == pytest.approx(
        BINARY_EXPECTED)


def test_binary_two_logits_by_hand():
    # Softmax over two logits is the sigmoid of their difference: the same rows as above.
    logits = np.stack([np.zeros(4), BINARY_LOGITS], axis=1) + np.array([[0.0], [1.0], [3.0], [-2.0]])
    assert classification_scores(logits, BINARY_Y, 2) == pytest.approx(BINARY_EXPECTED)


def test_multiclass_by_hand():
    scores = classification_scores(MULTI_LOGITS, MULTI_Y, 3)
    assert scores == pytest.approx(MULTI_EXPECTED)
    assert scores["auc"] == pytest.approx(roc_auc_score(MULTI_Y, softmax(MULTI_LOGITS, axis=1), multi_class="ovr"))


@pytest.mark.parametrize("n_classes", [2, 3, 10])
def test_agrees_with_scikit_learn_with_ties(n_classes):
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 360)
    # float32 as a model returns them, rounded so that some rows tie
    logits = (rng.normal(size=(360, n_classes)).round(1) + np.eye(n_classes)[y]).astype(np.float32)
    p = softmax(logits.astype(np.float64), axis=1)
    if n_classes == 2:
        assert len(np.unique(p[:, 1])) < 300
    scores = classification_scores(logits, y, n_classes)
    predicted = logits.argmax(axis=1)
    assert scores["f1"] == pytest.approx(f1_score(y, predicted, average="macro", zero_division=0))
    expected_auc = (roc_auc_score(y, p[:, 1]) if n_classes == 2
                    else roc_auc_score(y, p, multi_class="ovr", average="macro", labels=range(n_classes)))
    assert scores["auc"] == pytest.approx(expected_auc, abs=1e-6)
    assert 0.5 < scores["auc"] < 1  # informative but imperfect: the comparison is not trivial


def test_single_logit_agrees_with_scikit_learn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    z = rng.normal(size=200).round(1) + y
    scores = classification_scores(z, y, 2, binary_logit=True)
    assert scores["auc"] == pytest.approx(roc_auc_score(y, z))
    assert scores["f1"] == pytest.approx(f1_score(y, (z > 0).astype(int), average="macro", zero_division=0))


def test_auc_undefined_is_nan():
    # A split with a single class present: no negatives to rank against.
    one_class = classification_scores(np.array([0.3, -1.0, 2.0]), np.array([1, 1, 1]), 2, binary_logit=True)
    assert math.isnan(one_class["auc"])
    assert one_class["f1"] == pytest.approx(0.4)  # class 1: 2 of 3 found (F1 4/5); class 0: a false alarm (0)
    assert math.isnan(classification_scores(np.array([[1.0, 0.0], [2.0, 0.0]]), np.array([0, 0]), 2)["auc"])
    # Multiclass with class 2 absent: its one-vs-rest AUC is undefined, and so is the mean.
    absent = classification_scores(MULTI_LOGITS[:4], np.array([0, 1, 0, 1]), 3)
    assert math.isnan(absent["auc"])
    # F1 averages the classes seen (0 and 1: one hit, one miss, one false alarm each), not the absent 2
    assert absent["f1"] == pytest.approx(0.5)
    # A diverged model: NaN outputs give a NaN AUC, not an exception.
    assert math.isnan(classification_scores(np.full((4, 3), np.nan), np.array([0, 1, 2, 0]), 3)["auc"])
    empty = classification_scores(np.zeros((0, 3)), np.zeros(0, np.int64), 3)
    assert math.isnan(empty["auc"]) and math.isnan(empty["f1"])


@pytest.mark.parametrize(("logits", "y", "n_classes", "binary", "message"), [
    (np.zeros((4, 3)), np.array([0, 1, 2, 0]), 4, False, r"logits must have shape \(4, n_classes\)"),
    (np.zeros((4, 2)), np.array([0, 1, 1, 0]), 2, True, r"binary logits must have shape \(4,\) or \(4, 1\)"),
    (np.zeros(4), np.array([0, 1, 1, 0]), 3, True, "a single logit per row means two classes"),
    (np.zeros((4, 3)), np.array([0, 1, 3, 0]), 3, False, r"class ids in \[0, 3\), got values in \[0, 3\]"),
    (np.zeros((4, 2)), np.array([0, 1, 0.5, 0]), 2, False, "class ids"),
])
def test_bad_inputs(logits, y, n_classes, binary, message):
    with pytest.raises(ValueError, match=message):
        classification_scores(logits, y, n_classes, binary_logit=binary)
