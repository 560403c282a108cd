"""Classification metrics as plain numpy functions, driven by :class:`facelab.tasks.Task`.

No torch. The standard metrics are scikit-learn's (confusion matrix, precision / recall /
F1, balanced accuracy, ROC-AUC and curve; imported inside the functions); what it does
not have in this form is here: thresholds tuned over every candidate at once, the
reliability bins with ECE, baselines, subgroup gaps, weak-label hints.
``tests/test_metrics.py`` checks them by hand.

Conventions: ``probs`` is (N, len(task.labels)) as every predictor returns it; targets are
class indices (N,) for binary/multiclass and a 0/1 matrix (N, L) for multilabel
(:func:`facelab.tasks.targets_from_table`).
"""
from __future__ import annotations

from typing import Any, Sequence

import math

import numpy as np

from facelab.errors import ConfigError, DataError
from facelab.tasks import Task

THRESHOLD_METRICS = ("balanced_accuracy", "accuracy", "f1")
NAN = float("nan")


# --------------------------------------------------------------------------- building blocks

def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): rows = true class, columns = predicted class
    (scikit-learn's, with a row and a column for every class, present or not)."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if not len(y_true):
        return np.zeros((n_classes, n_classes), np.int64)
    return sk_confusion_matrix(y_true, y_pred, labels=np.arange(n_classes)).astype(np.int64)


def per_class_prf(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (scikit-learn's precision_recall_fscore_support).

    A class never predicted has precision NaN (undefined), never present: recall NaN; F1 is
    2 TP / (2 TP + FP + FN), NaN only for a class neither present nor predicted.
    """
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, support = precision_recall_fscore_support(np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64),
                                                       labels=np.arange(n_classes), average=None,
                                                       zero_division=np.nan)
    return {"precision": np.asarray(p, np.float64), "recall": np.asarray(r, np.float64),
            "f1": np.asarray(f, np.float64), "support": np.asarray(support, np.int64)}


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes that occur (chance level = 1 / number of classes), from a
    confusion matrix: the training loop accumulates one over batches. On labels this is
    scikit-learn's balanced_accuracy_score (see :func:`_balanced_accuracy`)."""
    support = cm.sum(1)
    recall = np.diag(cm)[support > 0] / support[support > 0]
    return float(recall.mean()) if recall.size else NAN


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """scikit-learn's balanced_accuracy_score: mean recall over the classes in ``y_true``
    (a class only predicted counts nowhere, as in :func:`balanced_accuracy`)."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true": expected here
        return float(balanced_accuracy_score(y_true, y_pred))


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the 0/1 labels ``y_true`` (scikit-learn's
    roc_auc_score): the probability that a random positive scores higher than a random
    negative, ties counting one half. NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true).astype(bool)
    if y.all() or not y.any():
        return NAN
    return float(roc_auc_score(y, np.asarray(score, np.float64)))


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold (for plotting; scikit-learn's
    roc_curve without dropping collinear points). NaN rates when a class is absent."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, np.float64)
    if y.all() or not y.any():
        thresholds = np.r_[np.inf, np.unique(s)[::-1]]
        tpr = np.array([(s[y] >= t).mean() if y.any() else NAN for t in thresholds])
        fpr = np.array([(s[~y] >= t).mean() if (~y).any() else NAN for t in thresholds])
        return fpr, tpr
    from sklearn.metrics import roc_curve as sk_roc_curve

    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr


def binary_metrics(y_true: np.ndarray, y_pred: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision, recall, F1 (positive class) and ROC-AUC."""
    prf = per_class_prf(y_true, y_pred, 2)
    return {"accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
            "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
            "precision": float(prf["precision"][1]), "recall": float(prf["recall"][1]),
            "f1": float(prf["f1"][1]), "auc": roc_auc(y_true, score)}


def majority_baseline(y_true: np.ndarray, y_reference: np.ndarray | None = None) -> tuple[int, float]:
    """The class most frequent in ``y_reference`` (default ``y_true``: the best constant
    answer on this set, the honest baseline) and the accuracy of always predicting it on
    ``y_true``. Balanced accuracy of any constant answer is 1 / number of classes present."""
    ref = np.asarray(y_true if y_reference is None or len(y_reference) == 0 else y_reference, np.int64)
    majority = int(np.bincount(ref).argmax())
    return majority, float((np.asarray(y_true) == majority).mean())


# --------------------------------------------------------------------------- thresholds

def tune_threshold(y_true: np.ndarray, score: np.ndarray, metric: str = "balanced_accuracy") -> float:
    """The decision threshold on ``score`` that maximises ``metric`` on these labels.

    Candidates are midpoints between consecutive distinct scores (plus 0.5); ties go to
    the candidate closest to 0.5, so a flat metric keeps the default threshold.
    """
    if metric not in THRESHOLD_METRICS:
        raise ConfigError(f"unknown threshold metric {metric!r}; valid: {', '.join(THRESHOLD_METRICS)}")
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(score, np.float64)
    if len(np.unique(y)) < 2:
        return 0.5
    u = np.unique(s)
    candidates = np.unique(np.r_[0.5, (u[1:] + u[:-1]) / 2, u[0] - 1e-6, u[-1] + 1e-6])
    values = _threshold_metric(y.astype(bool), s, candidates, metric)
    best = np.flatnonzero(values >= values.max() - 1e-12)
    t = candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]]
    return float(np.clip(t, 0.0, 1.0))


def _threshold_metric(y: np.ndarray, s: np.ndarray, candidates: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of the decisions ``s >= t`` for every candidate ``t`` at once, from counts.

    Not scikit-learn once per candidate: on 2,000 scores with 852 candidates its
    balanced_accuracy_score took 1.14 s, these counts 0.33 ms, the same numbers (the
    previous loop over binary_metrics: 0.79 s per attribute, 32 s for CelebA's 40). Both
    classes are present here, so balanced accuracy is the mean of the two recalls and F1 is
    2 TP / (2 TP + FP + FN), as in :func:`binary_metrics`.
    """
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    tp = (len(pos) - np.searchsorted(pos, candidates, side="left")).astype(np.float64)
    fp = (len(neg) - np.searchsorted(neg, candidates, side="left")).astype(np.float64)
    fn, tn = len(pos) - tp, len(neg) - fp
    if metric == "accuracy":
        return (tn + tp) / len(s)
    if metric == "f1":
        return 2 * tp / (2 * tp + fp + fn)
    return (tn / len(neg) + tp / len(pos)) / 2


def tune_thresholds(task: Task, probs: np.ndarray, targets: np.ndarray,
                    metric: str = "balanced_accuracy") -> tuple[float, ...]:
    """Per-output thresholds for ``task`` tuned on (validation) predictions; () for multiclass."""
    probs = np.asarray(probs)
    if task.kind == "multiclass":
        return ()
    if task.kind == "binary":
        return (tune_threshold(targets, probs[:, 1], metric),)
    return tuple(tune_threshold(targets[:, j], probs[:, j], metric) for j in range(len(task.labels)))


# --------------------------------------------------------------------------- calibration

def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability diagram data and expected calibration error (ECE).

    Not scikit-learn's calibration_curve: it drops empty bins, returns no counts and no ECE,
    and puts a confidence equal to an edge in the upper bin (here: the lower, right=True).

    ``confidence``: the probability the model gave to its decision; ``correct``: whether
    the decision was right. Equal-width bins over [0, 1]; ECE = sum over bins of
    (bin size / N) * |accuracy - mean confidence|.
    """
    conf = np.asarray(confidence, np.float64).ravel()
    ok = np.asarray(correct, np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, ok, bins) / count
        mean_conf = np.bincount(idx, conf, bins) / count
    gaps = np.where(count > 0, np.abs(acc - mean_conf), 0.0)
    ece = float((count * gaps).sum() / max(len(conf), 1))
    return {"edges": edges.tolist(), "count": count.tolist(), "accuracy": _nan_list(acc),
            "confidence": _nan_list(mean_conf), "ece": ece}


def decision_confidence(task: Task, probs: np.ndarray) -> np.ndarray:
    """Probability of the decision taken: max softmax (multiclass), else p or 1 - p per output."""
    probs = np.asarray(probs, np.float64)
    if task.kind == "multiclass":
        return probs.max(1)
    p = probs[:, 1:] if task.kind == "binary" else probs
    decided = task.decide(probs).reshape(p.shape).astype(bool)
    return np.where(decided, p, 1 - p)


# --------------------------------------------------------------------------- subgroups

def subgroup_accuracy(correct: np.ndarray, groups: Sequence[Any], min_count: int = 1) -> dict[str, Any]:
    """Accuracy per group value and the worst-minus-best gap.

    ``correct``: (N,) or (N, L) booleans (multilabel: the mean over attributes per photo).
    Groups with fewer than ``min_count`` photos are listed but left out of the gap.
    """
    ok = np.asarray(correct, np.float64)
    ok = ok.mean(1) if ok.ndim == 2 else ok
    g = np.asarray([str(v) for v in groups])
    rows = {v: {"n": int((g == v).sum()), "accuracy": float(ok[g == v].mean())} for v in sorted(set(g))}
    counted = [r["accuracy"] for r in rows.values() if r["n"] >= min_count]
    gap = float(min(counted) - max(counted)) if len(counted) >= 2 else NAN
    worst = min((v for v in rows if rows[v]["n"] >= min_count), key=lambda v: rows[v]["accuracy"], default=None)
    return {"groups": rows, "gap": gap, "worst": worst}


# --------------------------------------------------------------------------- the whole set

def evaluate_predictions(task: Task, probs: np.ndarray, targets: np.ndarray,
                         train_targets: np.ndarray | None = None, bins: int = 10) -> dict[str, Any]:
    """Every metric of a prediction set, as a JSON-ready dict.

    Binary / multiclass: accuracy, balanced accuracy, per-class precision/recall/F1,
    ROC-AUC (binary: of p; multiclass: mean one-vs-rest), confusion matrix, majority
    baseline. Multilabel: the same per attribute plus the mean over attributes.
    Always: reliability bins and ECE.
    """
    probs = np.asarray(probs, np.float64)
    targets = np.asarray(targets)
    _check_shapes(task, probs, targets)
    decisions = task.decide(probs)
    correct = decisions == targets
    out = (_multilabel(task, probs, targets, decisions, train_targets) if task.kind == "multilabel"
           else _single_label(task, probs, targets, decisions, train_targets))
    out["n"] = int(len(probs))
    out["task"] = task.to_dict()
    out["calibration"] = reliability(decision_confidence(task, probs), correct, bins)
    out["ece"] = out["calibration"]["ece"]
    return out


def _check_shapes(task: Task, probs: np.ndarray, targets: np.ndarray) -> None:
    if probs.ndim != 2 or probs.shape[1] != len(task.labels):
        raise ValueError(f"probabilities must have shape (N, {len(task.labels)}) for labels "
                         f"{list(task.labels)}; got {probs.shape}")
    if len(targets) != len(probs):
        raise ValueError(f"{len(probs)} predictions but {len(targets)} targets")
    if len(probs) == 0:
        raise DataError("no predictions to evaluate (the data set is empty)")
    if task.kind == "multilabel" and targets.shape != probs.shape:
        raise ValueError(f"multilabel targets must have shape {probs.shape}, got {targets.shape}")


def _single_label(task: Task, probs: np.ndarray, targets: np.ndarray, decisions: np.ndarray,
                  train_targets: np.ndarray | None) -> dict[str, Any]:
    k = len(task.labels)
    cm = confusion_matrix(targets, decisions, k)
    prf = per_class_prf(targets, decisions, k)
    if task.kind == "binary":
        auc = roc_auc(targets, probs[:, 1])
    else:
        aucs = [roc_auc(targets == c, probs[:, c]) for c in range(k)]
        auc = float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else NAN
    majority, base_acc = majority_baseline(targets)  # the best constant answer on THIS set
    train_majority, train_acc = majority_baseline(targets, train_targets)
    present = int((prf["support"] > 0).sum())
    return {
        "accuracy": float(np.trace(cm) / cm.sum()), "balanced_accuracy": _balanced_accuracy(targets, decisions),
        "auc": auc,
        "per_class": {name: {"precision": _f(prf["precision"][c]), "recall": _f(prf["recall"][c]),
                             "f1": _f(prf["f1"][c]), "support": int(prf["support"][c])}
                      for c, name in enumerate(task.labels)},
        "macro_f1": _f(np.nanmean(prf["f1"])) if present else NAN,
        "confusion_matrix": cm.tolist(),
        "baseline": {"majority_class": task.labels[majority], "accuracy": base_acc,
                     "balanced_accuracy": 1.0 / max(present, 1),
                     "train_majority_class": task.labels[train_majority], "train_majority_accuracy": train_acc},
    }


def _multilabel(task: Task, probs: np.ndarray, targets: np.ndarray, decisions: np.ndarray,
                train_targets: np.ndarray | None) -> dict[str, Any]:
    per_attr = {}
    for j, name in enumerate(task.labels):
        m = binary_metrics(targets[:, j], decisions[:, j], probs[:, j])
        ref = None if train_targets is None else np.asarray(train_targets)[:, j]
        majority, base = majority_baseline(targets[:, j])  # the best constant answer on THIS set
        _, train_base = majority_baseline(targets[:, j], ref)
        m.update({"threshold": task.thresholds[j], "positives": int(targets[:, j].sum()),
                  "baseline_accuracy": base, "baseline_majority": majority, "baseline_balanced_accuracy": 0.5,
                  "train_majority_accuracy": train_base})
        per_attr[name] = m
    mean = {key: _f(np.nanmean([a[key] for a in per_attr.values()]))
            for key in ("accuracy", "balanced_accuracy", "f1", "auc", "baseline_accuracy")}
    return {"per_attribute": per_attr, "mean": mean, "accuracy": mean["accuracy"],
            "balanced_accuracy": mean["balanced_accuracy"], "auc": mean["auc"], "macro_f1": mean["f1"],
            "baseline": {"accuracy": mean["baseline_accuracy"], "balanced_accuracy": 0.5}}


#: A label within this much balanced accuracy of a constant answer has learned little.
WEAK_MARGIN = 0.05


def weak_labels(metrics: dict[str, Any]) -> dict[str, str]:
    """Labels whose model is near or below the best constant answer, or below chance in
    ROC-AUC: label -> what is wrong and what to try. Whole-task name ``"all"`` for
    single-label tasks."""
    rows = metrics.get("per_attribute") or {"all": {"balanced_accuracy": metrics.get("balanced_accuracy"),
                                                    "auc": metrics.get("auc"),
                                                    "baseline_balanced_accuracy":
                                                        metrics.get("baseline", {}).get("balanced_accuracy")}}
    out = {}
    for name, a in rows.items():
        bal, auc = _num(a.get("balanced_accuracy")), _num(a.get("auc"))
        chance = _num(a.get("baseline_balanced_accuracy", 0.5))
        if math.isfinite(auc) and auc < 0.5:
            out[name] = (f"ROC-AUC {auc:.2f} is below chance: the model ranks the wrong way round. Check the labels, "
                         f"then train longer or with a pretrained backbone at a larger --size")
        elif math.isfinite(bal) and bal < chance + WEAK_MARGIN:
            hint = (f" (its ROC-AUC {auc:.2f} says the scores do rank: the decision threshold is off; tune it "
                    f"with `facelab evaluate --tune-split valid` where the valid split holds 10 or more "
                    f"people)") if math.isfinite(auc) and auc >= 0.7 else \
                ": add photos of more people, train longer, or use a pretrained backbone at a larger --size"
            out[name] = f"balanced accuracy {bal:.2f} is no better than a constant answer ({chance:.2f}){hint}"
    return out


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def per_sample_loss(task: Task, probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Cross-entropy per photo (multilabel: per photo and attribute, shape (N, L))."""
    p = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
    if task.kind == "multilabel":
        t = np.asarray(targets, np.float64)
        return -(t * np.log(p) + (1 - t) * np.log(1 - p))
    return -np.log(p[np.arange(len(p)), np.asarray(targets, np.int64)])


def _f(x: Any) -> float:
    return float(x)


def _nan_list(a: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in a]
