"""The evaluation's files: metrics.json, predictions.csv, plots/, report.html, MODEL_CARD.md."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from facelab import metrics as M
from facelab import templates
from facelab._io import write_bytes, write_json, write_text
from facelab.data import SampleTable
from facelab.evaluate.analysis import ensemble_spread
from facelab.evaluate.config import SUBJECTIVE_ATTRIBUTES, EvaluateConfig
from facelab.evaluate.plots import make_plots
from facelab.tasks import Task


def write_outputs(out: Path, task: Task, metrics: dict, table: SampleTable, member_probs: np.ndarray,
                  y: np.ndarray, config: EvaluateConfig) -> dict[str, Path]:
    """metrics.json, predictions.csv, plots/, report.html and MODEL_CARD.md."""
    out.mkdir(parents=True, exist_ok=True)
    probs = member_probs.mean(0)
    plots = make_plots(task, metrics, table, member_probs, y, config.top_k)
    files = {name: write_bytes(out / "plots" / f"{name}.png", png) for name, png in plots.items()}
    files["metrics"] = write_json(out / "metrics.json", _json_safe(metrics))
    files["predictions"] = write_predictions(out / "predictions.csv", task, table, probs, y, member_probs)
    files["report"] = write_report(out / "report.html", task, metrics, plots)
    files["model_card"] = write_text(out / "MODEL_CARD.md", model_card(task, metrics))
    return files


def write_predictions(path: Path, task: Task, table: SampleTable, probs: np.ndarray, y: np.ndarray,
                      member_probs: np.ndarray) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    std, _ = ensemble_spread(task, member_probs)
    loss = M.per_sample_loss(task, probs, y)
    loss = loss.mean(1) if loss.ndim == 2 else loss
    w.writerow(["photo", "crop", "identity", "target", *[f"p_{n}" for n in task.labels], "loss", "ensemble_std"])
    for i, p in enumerate(table.paths):
        target = task.labels[int(y[i])] if task.kind != "multilabel" else ",".join(
            n for n, v in zip(task.labels, y[i]) if v)
        w.writerow([str(table.source_of(i)), str(p), table.identities[i] or "", target, *[f"{v:.5f}" for v in probs[i]],
                    f"{loss[i]:.5f}", f"{std[i]:.5f}"])
    return write_text(path, buf.getvalue())


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# --------------------------------------------------------------------------- report.html, MODEL_CARD.md

def _headline_rows(m: dict) -> list[list[Any]]:
    base = m.get("baseline", {})
    rows = [["accuracy", m["accuracy"], base.get("accuracy", math.nan)],
            ["balanced accuracy", m["balanced_accuracy"], base.get("balanced_accuracy", math.nan)],
            ["ROC-AUC", m["auc"], 0.5], ["macro F1", m.get("macro_f1", math.nan), math.nan],
            ["expected calibration error", m["ece"], math.nan]]
    for r in rows:
        r.append(r[1] - r[2] if not (math.isnan(_num(r[1])) or math.isnan(_num(r[2]))) else math.nan)
    return rows


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def write_report(path: Path, task: Task, m: dict, plots: dict[str, bytes]) -> Path:
    """report.html from templates/evaluate_report.html; the rows of its tables are made here."""
    t = m["thresholds"]
    names = [task.labels[1]] if task.kind == "binary" else list(task.labels)
    if task.kind == "multilabel":
        label_rows = [[n, a["accuracy"], a["baseline_accuracy"], a["balanced_accuracy"], a["f1"], a["auc"],
                       a["threshold"], a["positives"]] for n, a in m["per_attribute"].items()]
    else:
        label_rows = [[n, c["precision"], c["recall"], c["f1"], c["support"]] for n, c in m["per_class"].items()]
    ensemble = m.get("ensemble")
    grids = [(k.replace("top_losses_", "") if k != "top_losses" else "", k, v) for k, v in plots.items()
             if k.startswith("top_losses")]
    return templates.write(
        path, "evaluate_report.html", title="facelab evaluation", task=task, m=m, src=m["source"], plots=plots,
        headline=_headline_rows(m), weak=m.get("weak_labels") or {}, t=t,
        threshold_rows=[[n, b, a] for n, b, a in zip(names, t.get("before", []), t.get("thresholds", []))],
        label_rows=label_rows, grids=grids, ensemble=ensemble,
        sg_rows={col: [[g, r["n"], r["accuracy"]] for g, r in sg["groups"].items()]
                 for col, sg in m["subgroups"].items()},
        ensemble_rows=[[r["run"], r["accuracy"]] for r in ensemble["members"]] if ensemble else [])


def model_card(task: Task, m: dict) -> str:
    """MODEL_CARD.md (templates/model_card.md): what the model is, how good it is against
    baselines, where it fails, limits."""
    src = m["source"]
    gaps = [(c, sg) for c, sg in m["subgroups"].items() if not math.isnan(_num(sg["gap"])) and sg["gap"] < -0.05]
    return templates.render(
        "model_card.md", name=Path(src["runs"][0]).name, src=src, model=src.get("model", {}), task=task, m=m,
        thresholds=", ".join(f"{t:.2f}" for t in task.thresholds), headline=_headline_rows(m),
        ensemble=m.get("ensemble"), subjective=[n for n in task.labels if n in SUBJECTIVE_ATTRIBUTES], gaps=gaps,
        weak=m.get("weak_labels") or {})
