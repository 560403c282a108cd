"""Metrics against hand computations on small fixed prediction sets."""
from __future__ import annotations

import math

import numpy as np
import pytest

from facelab import metrics as M
from facelab.tasks import Task

# Binary: 8 photos. p = probability of the positive class.
Y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1, 0.45])


def test_binary_metrics_match_hand_computation():
    task = Task("binary", ("no", "yes"))
    out = M.evaluate_predictions(task, np.c_[1 - P, P], Y, train_targets=np.array([0, 0, 1]))
    # threshold 0.5: predictions 1,1,0,1,0,0,0,0 -> TP=2 FN=1 FP=1 TN=4
    assert out["accuracy"] == pytest.approx(6 / 8)
    assert out["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert out["per_class"]["yes"]["precision"] == pytest.approx(2 / 3)
    assert out["per_class"]["yes"]["recall"] == pytest.approx(2 / 3)
    assert out["per_class"]["no"]["f1"] == pytest.approx(2 * 4 / (5 + 5))
    assert out["confusion_matrix"] == [[4, 1], [1, 2]]
    # AUC: positives 0.9, 0.6, 0.4 vs negatives 0.7, 0.3, 0.2, 0.1, 0.45:
    # 0.9 beats 5, 0.6 beats 4, 0.4 beats 3 -> 12 of 15 pairs
    assert out["auc"] == pytest.approx(12 / 15)
    # majority class of the training labels (0) -> 5/8 correct on this set
    assert out["baseline"]["majority_class"] == "no"
    assert out["baseline"]["accuracy"] == pytest.approx(5 / 8)


def test_auc_ties_count_half():
    assert M.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert M.roc_auc([0, 0, 1], [0.2, 0.5, 0.5]) == pytest.approx(0.75)
    assert math.isnan(M.roc_auc([1, 1], [0.2, 0.3]))


def test_multiclass_confusion_balanced_accuracy_and_auc():
    task = Task("multiclass", ("a", "b", "c"))
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1],
                      [0.3, 0.3, 0.4], [0.2, 0.6, 0.2]])
    y = np.array([0, 1, 2, 1, 2, 2])
    out = M.evaluate_predictions(task, probs, y)
    # argmax: 0,1,2,0,2,1
    assert out["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["balanced_accuracy"] == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    assert out["per_class"]["a"]["precision"] == pytest.approx(1 / 2)
    assert out["per_class"]["b"]["f1"] == pytest.approx(2 * 1 / (2 + 2))
    # one-vs-rest AUC of class a: positive 0.7 vs negatives .2 .1 .5 .3 .2 -> 5/5
    # class b: positives .5 .4 vs negatives .2 .3 .3 .6 -> (3+3)/8
    # class c: positives .6 .4 .2 vs negatives .1 .3 .1 -> (3 + 3 + 2)/9
    assert out["auc"] == pytest.approx((1 + 6 / 8 + 8 / 9) / 3)
    assert out["baseline"]["accuracy"] == pytest.approx(3 / 6)
    assert out["baseline"]["balanced_accuracy"] == pytest.approx(1 / 3)


def test_multilabel_per_attribute_and_mean_with_baselines():
    task = Task("multilabel", ("Smiling", "Eyeglasses"), (0.5, 0.3))
    probs = np.array([[0.8, 0.1], [0.4, 0.35], [0.6, 0.2], [0.2, 0.05]])
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 0]], np.uint8)
    out = M.evaluate_predictions(task, probs, y)
    smile, glasses = out["per_attribute"]["Smiling"], out["per_attribute"]["Eyeglasses"]
    assert smile["accuracy"] == pytest.approx(2 / 4)  # decisions 1,0,1,0
    assert glasses["accuracy"] == pytest.approx(1.0)  # threshold 0.3: 0,1,0,0
    assert glasses["baseline_accuracy"] == pytest.approx(3 / 4)
    assert smile["auc"] == pytest.approx(3 / 4)  # .8 beats .6 .2; .4 beats .2
    assert out["mean"]["accuracy"] == pytest.approx(0.75)
    assert out["baseline"]["accuracy"] == pytest.approx((2 / 4 + 3 / 4) / 2)


def test_threshold_tuning_maximises_the_chosen_metric():
    # balanced accuracy is best anywhere in (0.3, 0.4]: all 3 positives and 3 of 5 negatives
    # (0.8) beats 0.5's 2/3 and 4/5 (0.733)
    t = M.tune_threshold(Y, P, "balanced_accuracy")
    assert 0.3 < t <= 0.4
    pred = (P >= t).astype(int)
    assert M.binary_metrics(Y, pred, P)["balanced_accuracy"] == pytest.approx((1 + 3 / 5) / 2)
    # one class only: keep 0.5
    assert M.tune_threshold(np.ones(4), np.linspace(0, 1, 4)) == 0.5
    with pytest.raises(ValueError, match="valid: balanced_accuracy"):
        M.tune_threshold(Y, P, "kappa")


def test_ece_and_reliability_bins_by_hand():
    conf = np.array([0.95, 0.95, 0.65, 0.65, 0.65, 0.65])
    ok = np.array([1, 0, 1, 1, 1, 0])
    r = M.reliability(conf, ok, bins=10)
    # bin 0.9-1.0: acc 0.5, conf .95 -> gap .45 (2 photos); bin 0.6-0.7: acc .75, conf .65 -> .10 (4)
    assert r["ece"] == pytest.approx((2 * 0.45 + 4 * 0.10) / 6)
    assert r["count"][9] == 2 and r["count"][6] == 4 and sum(r["count"]) == 6
    assert r["accuracy"][0] is None


def test_decision_confidence_per_task():
    binary = Task("binary", ("no", "yes"))
    assert M.decision_confidence(binary, np.array([[0.2, 0.8], [0.7, 0.3]])).ravel().tolist() == \
        pytest.approx([0.8, 0.7])


def test_subgroup_gap():
    correct = np.array([1, 1, 0, 1, 0, 0])
    groups = ["Male", "Male", "Male", "Female", "Female", "Female"]
    r = M.subgroup_accuracy(correct, groups)
    assert r["groups"]["Male"]["accuracy"] == pytest.approx(2 / 3)
    assert r["groups"]["Female"]["n"] == 3
    assert r["gap"] == pytest.approx(1 / 3 - 2 / 3)
    assert r["worst"] == "Female"


def test_bad_inputs_are_clear():
    task = Task("binary", ("no", "yes"))
    with pytest.raises(ValueError, match="shape"):
        M.evaluate_predictions(task, np.ones((3, 3)) / 3, np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        M.evaluate_predictions(task, np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError, match="targets"):
        M.evaluate_predictions(task, np.ones((3, 2)) / 2, np.zeros(4))


def test_per_sample_loss():
    task = Task("multiclass", ("a", "b"))
    loss = M.per_sample_loss(task, np.array([[0.25, 0.75]]), np.array([1]))
    assert loss[0] == pytest.approx(-math.log(0.75))
