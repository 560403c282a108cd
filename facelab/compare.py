"""Compare runs side by side: model, size, cost and quality in one table, CSV and plot.

Quality comes from the run's ``metrics.json`` (written by ``facelab evaluate``) when there is
one, else from the last epoch of ``metrics.csv`` (the training-time validation numbers,
marked as such in the ``metrics_from`` column).
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from facelab import templates
from facelab._html import figure_png
from facelab._io import read_json, write_bytes, write_text
from facelab.bundle import bundle_dir_of, read_bundle
from facelab.errors import ConfigError
from facelab.evaluate.runs import resolve_members

log = logging.getLogger(__name__)

COLUMNS = ("run", "model", "task", "parameters", "image_size", "epochs", "train_seconds", "images_per_second",
           "accuracy", "baseline_accuracy", "balanced_accuracy", "auc", "ece", "metrics_from")
_TIME_KEYS = ("train_seconds", "seconds", "train_time", "time_s", "elapsed_s", "duration_s")


def compare(runs: Sequence[str | Path], out: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per run (see :data:`COLUMNS`); writes ``compare.csv``, ``compare.png`` and
    ``compare.html`` into ``out`` (default: ``compare/`` beside the first run)."""
    if not runs:
        raise ConfigError("no runs to compare: pass two or more run folders")
    rows = []
    for run in runs:
        members, _ = resolve_members(run)
        rows.append(run_row(Path(run), members))
    out = Path(out) if out else Path(runs[0]).parent / "compare"
    write_text(out / "compare.csv", to_csv(rows))
    png = plot_compare(rows)
    write_bytes(out / "compare.png", png)
    _write_html(out / "compare.html", rows, png)
    log.info("compared %d runs -> %s", len(rows), out)
    return rows


def run_row(run: Path, members: Sequence[Path]) -> dict[str, Any]:
    """The comparison row of one run (or ensemble: sizes and costs summed over members)."""
    bundles = [read_bundle(m)[1] for m in members]
    b = bundles[0]
    train = [bb.get("train", {}) for bb in bundles]
    epochs_csv = [_read_metrics_csv(m / "metrics.csv") for m in members]
    row: dict[str, Any] = {
        "run": run.name + (f" ({len(members)} members)" if len(members) > 1 else ""),
        "model": b.get("model", {}).get("name", "?"), "task": b.get("task", {}).get("kind", "?"),
        "parameters": _sum(_parameters(m, bb) for m, bb in zip(members, bundles)),
        "image_size": b.get("input", {}).get("size"),
        "epochs": train[0].get("epochs") or (len(epochs_csv[0]) or None),
        "train_seconds": _sum(_train_seconds(t, e) for t, e in zip(train, epochs_csv)),
        "images_per_second": train[0].get("images_per_second"),
    }
    row.update(_quality(run, epochs_csv[0]))
    return row


def _sum(values: Any) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) if vals else None


def _parameters(run: Path, bundle: dict) -> int | None:
    """Parameter count: recorded in the bundle, else counted from the saved weights."""
    for d in (bundle.get("train", {}), bundle.get("model", {})):
        for key in ("parameters", "params", "num_parameters"):
            if d.get(key):
                return int(d[key])
    weights = bundle_dir_of(run) / "weights.pt"
    if not weights.is_file():
        return None
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return int(sum(v.numel() for k, v in state.items() if hasattr(v, "numel") and "running_" not in k
                   and not k.endswith("num_batches_tracked")))


def _train_seconds(train: dict, epochs: list[dict[str, str]]) -> float | None:
    for key in _TIME_KEYS:
        if train.get(key):
            return float(train[key])
    for key in _TIME_KEYS + ("epoch_seconds", "epoch_time", "time"):
        vals = [_float(r.get(key)) for r in epochs]
        if vals and not any(math.isnan(v) for v in vals):
            return float(max(vals) if key in ("elapsed_s", "time_s", "seconds") else sum(vals))
    return None


def _quality(run: Path, epochs: list[dict[str, str]]) -> dict[str, Any]:
    path = run / "metrics.json"
    if path.is_file():
        m = read_json(path)
        return {"accuracy": m.get("accuracy"), "baseline_accuracy": m.get("baseline", {}).get("accuracy"),
                "balanced_accuracy": m.get("balanced_accuracy"), "auc": m.get("auc"), "ece": m.get("ece"),
                "metrics_from": f"evaluate ({m.get('source', {}).get('split') or 'all'}, n={m.get('n')})"}
    last = epochs[-1] if epochs else {}
    pick = lambda *keys: next((_float(last[k]) for k in keys if k in last), None)  # noqa: E731
    return {"accuracy": pick("val_accuracy", "valid_accuracy", "val_acc", "accuracy"), "baseline_accuracy": None,
            "balanced_accuracy": pick("val_balanced_accuracy", "valid_balanced_accuracy", "balanced_accuracy"),
            "auc": pick("val_auc", "valid_auc", "auc"), "ece": None,
            "metrics_from": "metrics.csv (last epoch, not evaluated)" if last else "none"}


def _read_metrics_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
    return buf.getvalue()


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table for the terminal."""
    cols = ("run", "model", "parameters", "image_size", "epochs", "train_seconds", "images_per_second",
            "accuracy", "baseline_accuracy", "balanced_accuracy", "auc", "ece")
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    head = ["run", "model", "params", "size", "epochs", "train s", "img/s", "acc", "baseline", "bal.acc", "AUC", "ECE"]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if v < 10 else f"{v:,.0f}"
    if isinstance(v, int) and v >= 10000:
        return f"{v / 1e6:.2f}M"
    return str(v)


def plot_compare(rows: list[dict[str, Any]]) -> bytes:
    """Accuracy per run beside its baseline, and accuracy against speed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["run"] for r in rows]
    acc = [_float(r.get("accuracy")) for r in rows]
    base = [_float(r.get("baseline_accuracy")) for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 1.5 + 0.4 * len(rows)))
    pos = list(range(len(rows)))
    ax.barh(pos, acc, color="#4a7", label="accuracy")
    ax.scatter(base, pos, color="black", marker="|", s=300, label="majority baseline", zorder=3)
    ax.set_yticks(pos, names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.legend(loc="lower right", fontsize=8)
    speed = [_float(r.get("images_per_second")) for r in rows]
    for s, a, n in zip(speed, acc, names):
        if not (math.isnan(s) or math.isnan(a)):
            ax2.scatter(s, a)
            ax2.annotate(n, (s, a), fontsize=8)
    ax2.set_xlabel("training images / s")
    ax2.set_ylabel("accuracy")
    ax2.set_title("quality vs speed")
    return figure_png(fig)


def _write_html(path: Path, rows: list[dict[str, Any]], png: bytes) -> Path:
    """compare.html from templates/compare.html."""
    return templates.write(path, "compare.html", title="facelab run comparison", png=png, columns=COLUMNS,
                           rows=[[r.get(c) for c in COLUMNS] for r in rows])
