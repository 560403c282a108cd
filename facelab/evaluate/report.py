"""The evaluation's files: metrics.json, predictions.csv, plots/, report.html, MODEL_CARD.md."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from facelab import metrics as M
from facelab._io import write_bytes, write_json, write_text
from facelab.data import SampleTable
from facelab.evaluate.analysis import ensemble_spread
from facelab.evaluate.config import SUBJECTIVE_ATTRIBUTES, EvaluateConfig, _fmt
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


# --------------------------------------------------------------------------- HTML report

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
    from facelab._html import escape, img_tag, table, write_page

    src = m["source"]
    intro = (f"<p>Runs: {escape(', '.join(src['runs']))}<br>Data: {escape(src['data'])} "
             f"(split: {escape(src['split'] or 'all')}, {src['evaluated']} photos evaluated; "
             f"{src['dropped_by_face_preparation']} of {src['photos_in_source']} dropped by face preparation)<br>"
             f"Task: {escape(task.kind)} over {len(task.labels)} label(s)</p>")
    sections = [("Summary", table(_headline_rows(m), ["metric", "model", "baseline", "model - baseline"])
                 + "<p class='muted'>Baseline: the best constant answer on the evaluated photos (always the "
                   "class most frequent among them); any constant answer scores chance in balanced accuracy.</p>"
                 + _weak_html(m))]
    sections.append(("Decision thresholds", _thresholds_html(m["thresholds"], task)))
    if task.kind == "multilabel":
        rows = [[n, a["accuracy"], a["baseline_accuracy"], a["balanced_accuracy"], a["f1"], a["auc"], a["threshold"],
                 a["positives"]] for n, a in m["per_attribute"].items()]
        sections.append(("Per attribute", table(rows, ["attribute", "accuracy", "majority baseline", "balanced acc.",
                                                         "F1", "AUC", "threshold", "positives"])
                         + img_tag(plots["attributes"], "accuracy per attribute")))
    else:
        rows = [[n, c["precision"], c["recall"], c["f1"], c["support"]] for n, c in m["per_class"].items()]
        sections.append(("Per class", table(rows, ["class", "precision", "recall", "F1", "support"])
                         + img_tag(plots["confusion"], "confusion matrix")
                         + (img_tag(plots["roc"], "ROC curve") if "roc" in plots else "")))
    sections.append(("Calibration", f"<p>Expected calibration error: {m['ece']:.3f} (0 = the stated confidence "
                                    f"matches the observed accuracy).</p>" + img_tag(plots["reliability"], "reliability")))
    sections.append(("Subgroups", _subgroups_html(m["subgroups"], plots)))
    if "ensemble" in m:
        e = m["ensemble"]
        rows = [[r["run"], r["accuracy"]] for r in e["members"]]
        sections.append(("Ensemble", table(rows, ["member", "accuracy"])
                         + f"<p>Mean std of the decided probability: {e['mean_std']:.3f}; members disagree on "
                           f"{e['photos_with_disagreement']} of {src['evaluated']} photos.</p>"
                         + (img_tag(plots["disagreement"], "disagreement") if "disagreement" in plots else "")))
    grids = [(k, v) for k, v in plots.items() if k.startswith("top_losses")]
    sections.append(("Top losses: the most confidently wrong faces",
                     "".join(f"<h3>{escape(k.replace('top_losses_', '') if k != 'top_losses' else '')}</h3>"
                             + img_tag(v, k) for k, v in grids) or "<p class='ok'>No errors.</p>"))
    return write_page(path, "facelab evaluation", sections, intro)


def _weak_html(m: dict) -> str:
    from facelab._html import escape

    weak = m.get("weak_labels") or {}
    if not weak:
        return ""
    items = "".join(f"<li><b>{escape(n)}</b>: {escape(why)}</li>" for n, why in weak.items())
    return f"<p><b>Labels the model has not learned</b> (near or below a constant answer):</p><ul>{items}</ul>"


def _thresholds_html(t: dict, task: Task) -> str:
    from facelab._html import escape, table

    if not t.get("tuned"):
        return f"<p>Not tuned: {escape(t.get('why', ''))}.</p>"
    names = [task.labels[1]] if task.kind == "binary" else list(task.labels)
    rows = [[n, b, a] for n, b, a in zip(names, t["before"], t["thresholds"])]
    before = t.get("before_metrics", {})
    return (f"<p>Tuned on the {escape(t['split'])} split ({t['n']} photos) to maximise {escape(t['metric'])}. "
            f"With the previous thresholds: accuracy {_fmt(before.get('accuracy'))}, balanced accuracy "
            f"{_fmt(before.get('balanced_accuracy'))}. Saved to: {escape(', '.join(t.get('saved_to', [])) or 'not saved')}.</p>"
            + table(rows, ["output", "before", "tuned"]))


def _subgroups_html(subgroups: dict, plots: dict[str, bytes]) -> str:
    from facelab._html import escape, img_tag, table

    if not subgroups:
        return "<p>No subgroup columns (pass --subgroups ATTR,... or identity).</p>"
    parts = []
    for col, sg in subgroups.items():
        rows = [[g, r["n"], r["accuracy"]] for g, r in sg["groups"].items()]
        gap = sg["gap"]
        cls = "warn" if not math.isnan(_num(gap)) and gap < -0.05 else "ok"
        parts.append(f"<h3>{escape(col)}</h3>" + table(rows, ["group", "photos", "accuracy"])
                     + f"<p class='{cls}'>Worst minus best: {_fmt(gap)} (worst group: {escape(sg['worst'])})</p>")
    return "".join(parts) + (img_tag(plots["subgroups"], "subgroups") if "subgroups" in plots else "")


# --------------------------------------------------------------------------- model card

def model_card(task: Task, m: dict) -> str:
    """MODEL_CARD.md: what the model is, how good it is against baselines, where it fails, limits."""
    src = m["source"]
    model = src.get("model", {})
    lines = [f"# Model card: {Path(src['runs'][0]).name}" + (" (ensemble)" if len(src["runs"]) > 1 else ""), "",
             "## Model", f"- Architecture: {model.get('name', '?')} ({model.get('backend', '?')})",
             f"- Input: {src['input'].get('size', '?')} px aligned face crops",
             f"- Runs: {', '.join(src['runs'])}",
             f"- Trained for {src['train'].get('epochs', '?')} epoch(s); training data: "
             f"{src.get('train_data') or 'see the run config.json'}",
             "", "## Task", f"- {task.kind} over {len(task.labels)} label(s): {', '.join(task.labels[:40])}"
             + (" ..." if len(task.labels) > 40 else ""),
             f"- Decision thresholds: {', '.join(f'{t:.2f}' for t in task.thresholds) or 'argmax'}"
             + (f" (tuned on {m['thresholds']['split']} for {m['thresholds']['metric']})"
                if m["thresholds"].get("tuned") else ""),
             "", "## Evaluation data",
             f"- {src['data']}, split {src['split'] or 'all'}: {src['evaluated']} photos "
             f"({src['dropped_by_face_preparation']} of {src['photos_in_source']} dropped: no usable face)",
             "", "## Metrics (beside the best constant answer on these photos)", "",
             "| metric | model | baseline |", "|---|---|---|"]
    lines += [f"| {r[0]} | {_fmt(r[1])} | {_fmt(r[2])} |" for r in _headline_rows(m)]
    if task.kind == "multilabel":
        lines += ["", "| attribute | accuracy | baseline | balanced acc. | AUC |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {_fmt(a['accuracy'])} | {_fmt(a['baseline_accuracy'])} | {_fmt(a['balanced_accuracy'])} "
                  f"| {_fmt(a['auc'])} |" for n, a in m["per_attribute"].items()]
    lines += ["", "## Subgroups"]
    for col, sg in m["subgroups"].items():
        groups = "; ".join(f"{g}: {_fmt(r['accuracy'])} (n={r['n']})" for g, r in sg["groups"].items())
        lines.append(f"- {col}: {groups}. Worst minus best: {_fmt(sg['gap'])}")
    if not m["subgroups"]:
        lines.append("- not measured (no subgroup columns in the data)")
    lines += ["", "## Calibration", f"- Expected calibration error {m['ece']:.3f} over {len(m['calibration']['count'])} bins "
              "(see the reliability diagram in report.html)."]
    if "ensemble" in m:
        e = m["ensemble"]
        lines.append(f"- Ensemble of {len(e['members'])}: members disagree on {e['photos_with_disagreement']} photos.")
    lines += ["", "## Intended use and limits", *_limits(task, m)]
    return "\n".join(lines) + "\n"


def _limits(task: Task, m: dict) -> list[str]:
    src = m["source"]
    out = ["- For learning and experiments with face classifiers; not for decisions about people "
           "(hiring, policing, access, credit).",
           f"- Measured on {src['evaluated']} photos only: with so few, a difference of a few points is noise.",
           "- Expects a face the detector finds; photos without one are dropped, not predicted.",
           "- Faces are biometric data: collect and keep them only with consent."]
    subjective = [n for n in task.labels if n in SUBJECTIVE_ATTRIBUTES]
    if subjective:
        out.append(f"- **Subjective labels**: {', '.join(subjective)} are the annotators' opinions (CelebA), not facts "
                   f"about a person; a model predicting them reproduces those opinions and their biases. "
                   + ("'Attractive' in particular must not be used to judge anyone. " if "Attractive" in subjective else ""))
    gaps = [(c, sg) for c, sg in m["subgroups"].items() if not math.isnan(_num(sg["gap"])) and sg["gap"] < -0.05]
    for col, sg in gaps:
        out.append(f"- Accuracy differs by {-sg['gap']:.1%} across {col} groups (worst: {sg['worst']}).")
    if "Male" in task.labels:
        out.append("- **Male** is CelebA's binary annotation of perceived gender; it says nothing about how "
                   "a person identifies.")
    for name, why in (m.get("weak_labels") or {}).items():
        out.append(f"- **{name} not learned**: {why}.")
    return out
