"""Every evaluation picture as PNG bytes: confusion matrix, ROC, per-attribute bars,
reliability diagram, subgroup bars, top-loss and disagreement grids."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab import metrics as M
from facelab._html import figure_png, image_grid, png_bytes
from facelab.data import SampleTable
from facelab.evaluate.analysis import ensemble_spread
from facelab.images import ImageError, read_image
from facelab.templates import fmt as _fmt
from facelab.tasks import Task

log = logging.getLogger(__name__)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def make_plots(task: Task, metrics: dict, table: SampleTable, member_probs: np.ndarray, y: np.ndarray,
               top_k: int) -> dict[str, bytes]:
    """Every evaluation picture as PNG bytes, keyed by file stem."""
    probs = member_probs.mean(0)
    plots: dict[str, bytes] = {"reliability": plot_reliability(metrics["calibration"])}
    if task.kind == "multilabel":
        plots["attributes"] = plot_attributes(metrics["per_attribute"])
    else:
        plots["confusion"] = plot_confusion(np.asarray(metrics["confusion_matrix"]), task.labels)
    if task.kind == "binary":
        plots["roc"] = plot_roc(y, probs[:, 1], metrics["auc"])
    if metrics.get("subgroups"):
        plots["subgroups"] = plot_subgroups(metrics["subgroups"])
    if top_k:
        plots.update(top_loss_grids(task, table, probs, y, top_k))
    if len(member_probs) > 1 and top_k:
        plots["disagreement"] = disagreement_grid(task, table, member_probs, y, top_k)
    return plots


def plot_confusion(cm: np.ndarray, labels: Sequence[str]) -> bytes:
    plt = _plt()
    k = len(labels)
    side = min(12.0, 2.5 + 0.3 * k)
    fig, ax = plt.subplots(figsize=(side, side))
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / cm.sum(1, keepdims=True)
    ax.imshow(np.nan_to_num(norm), cmap="Blues", vmin=0, vmax=1)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if np.nan_to_num(norm[i, j]) > 0.5 else "black", fontsize=8)
    ticks = np.arange(k)
    ax.set_xticks(ticks, [str(n)[:14] for n in labels], rotation=90, fontsize=7 if k > 15 else 9)
    ax.set_yticks(ticks, [str(n)[:14] for n in labels], fontsize=7 if k > 15 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (colour: share of the true class)")
    return figure_png(fig)


def plot_roc(y: np.ndarray, score: np.ndarray, auc: float) -> bytes:
    plt = _plt()
    fpr, tpr = M.roc_curve(y, score)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"model (AUC {_fmt(auc)})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(loc="lower right")
    ax.set_title("ROC curve")
    return figure_png(fig)


def plot_attributes(per_attr: dict[str, dict]) -> bytes:
    """Accuracy per attribute beside its majority-class baseline, sorted by the lift."""
    plt = _plt()
    names = sorted(per_attr, key=lambda n: per_attr[n]["accuracy"] - per_attr[n]["baseline_accuracy"])
    acc = [per_attr[n]["accuracy"] for n in names]
    base = [per_attr[n]["baseline_accuracy"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.25 * len(names)))
    pos = np.arange(len(names))
    ax.barh(pos + 0.2, acc, height=0.4, label="model")
    ax.barh(pos - 0.2, base, height=0.4, color="#bbb", label="majority baseline")
    ax.set_yticks(pos, names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Accuracy per attribute vs always predicting the majority")
    return figure_png(fig)


def plot_reliability(cal: dict) -> bytes:
    plt = _plt()
    edges = np.asarray(cal["edges"])
    centers = (edges[1:] + edges[:-1]) / 2
    acc = np.array([np.nan if a is None else a for a in cal["accuracy"]])
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(4.5, 5.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.bar(centers, np.nan_to_num(acc), width=edges[1] - edges[0], edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_ylabel("accuracy in bin")
    ax.set_title(f"Reliability diagram (ECE {cal['ece']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    axh.bar(centers, cal["count"], width=edges[1] - edges[0], color="#888")
    axh.set_xlabel("confidence of the decision")
    axh.set_ylabel("decisions")
    return figure_png(fig)


def plot_subgroups(subgroups: dict[str, dict]) -> bytes:
    plt = _plt()
    rows = [(f"{col}: {g}", r["accuracy"], r["n"]) for col, sg in subgroups.items() for g, r in sg["groups"].items()]
    rows = rows[:40]
    fig, ax = plt.subplots(figsize=(6, 1 + 0.3 * len(rows)))
    pos = np.arange(len(rows))
    ax.barh(pos, [r[1] for r in rows], color="#4a7")
    ax.set_yticks(pos, [f"{r[0]} (n={r[2]})" for r in rows], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_title("Accuracy per subgroup")
    return figure_png(fig)


def _read_thumb(path: Path) -> np.ndarray | None:
    try:
        return read_image(path)
    except ImageError as exc:
        log.warning("top-loss grid: %s", exc)
        return None


def _grid_png(images: list, captions: list[str], tile: int = 112) -> bytes:
    """A grid whose captions break at "|" (image_grid wraps at a fixed character count)."""
    width = max(8, tile // 6)  # image_grid's characters per caption line
    lines = [[part[:width].ljust(width) for part in c.split("|")][:3] for c in captions]
    return png_bytes(image_grid(images, ["".join(c).rstrip() for c in lines], cols=8, tile=tile, caption_lines=3))


def top_loss_grids(task: Task, table: SampleTable, probs: np.ndarray, y: np.ndarray, k: int) -> dict[str, bytes]:
    """The most confidently wrong faces: one grid (binary / multiclass) or one per attribute."""
    loss = M.per_sample_loss(task, probs, y)
    wrong = task.decide(probs) != y
    if task.kind != "multilabel":
        idx = [i for i in np.argsort(-loss) if wrong[i]][:k]
        if not idx:
            return {}
        captions = [f"{table.source_of(i).name}|pred {task.labels[int(probs[i].argmax())]} p={probs[i].max():.2f}|"
                    f"true {task.labels[int(y[i])]}" for i in idx]
        return {"top_losses": _grid_png([_read_thumb(table.paths[i]) for i in idx], captions)}
    grids = {}
    for j, name in enumerate(task.labels):
        idx = [i for i in np.argsort(-loss[:, j]) if wrong[i, j]][:max(1, k // 2)]
        if idx:
            captions = [f"{table.source_of(i).name}|p={probs[i, j]:.2f}|true: {'yes' if y[i, j] else 'no'}"
                        for i in idx]
            grids[f"top_losses_{name}"] = _grid_png([_read_thumb(table.paths[i]) for i in idx], captions, tile=96)
    return grids


def disagreement_grid(task: Task, table: SampleTable, member_probs: np.ndarray, y: np.ndarray, k: int) -> bytes:
    """The faces on which the ensemble members disagree most."""
    std, disagree = ensemble_spread(task, member_probs)
    idx = np.lexsort((-std, -disagree))[:k]
    probs = member_probs.mean(0)
    captions = [f"std {std[i]:.2f}|{disagree[i]:.0%} disagree|{_decision_text(task, probs[i])}" for i in idx]
    return _grid_png([_read_thumb(table.paths[i]) for i in idx], captions)


def _decision_text(task: Task, p: np.ndarray) -> str:
    d = task.decide(p[None])[0]
    if task.kind == "multilabel":
        return ",".join(n for n, v in zip(task.labels, d) if v) or "(none)"
    return f"{task.labels[int(d)]} {p[int(d)]:.2f}"
